//! A plugin written by hand against the ABI, without the SDK (which only
//! writes well-formed batches): its first batch is good, its second is not
//! JSON. The host must fail the stream with an error naming the plugin and
//! the line.

use fhirlift_plugin_abi::{ABI_VERSION, Buf, ERR_INVALID, Handle, OK, PluginDescriptor};

extern "C" fn manifest() -> Buf {
    Buf::from_vec(
        br#"{"name":"test-malformed","version":"0.0.1","description":"writes a batch that is not JSON (tests only)","config_schema":null,"streams":null}"#
            .to_vec(),
    )
}

extern "C" fn schema(_: *const u8, _: usize, out: *mut Buf) -> i32 {
    // SAFETY: the host passes a writable `out`.
    unsafe { out.write(Buf::from_vec(br#"["id"]"#.to_vec())) };
    OK
}

extern "C" fn open(_: *const u8, _: usize, out: *mut Handle) -> i32 {
    let batches = Box::new(0u32);
    // SAFETY: the host passes a writable `out`.
    unsafe { out.write(Box::into_raw(batches).cast()) };
    OK
}

extern "C" fn next_batch(handle: Handle, out: *mut Buf) -> i32 {
    // SAFETY: `handle` is the box `open` made, used by one thread.
    let batches = unsafe { &mut *handle.cast::<u32>() };
    *batches += 1;
    let text: &[u8] = match *batches {
        1 => b"{\"schema\":[\"id\"]}\n{\"record\":{\"key\":\"1\",\"values\":{\"id\":\"1\"},\"provenance\":{\"kind\":\"table\",\"table\":\"t\",\"key\":\"1\"}}}\n",
        2 => b"{\"record\":{\"key\":\"2\",\"values\":{\"id\":\"2\"},\"provenance\":{\"kind\":\"table\",\"table\":\"t\",\"key\":\"2\"}}}\n{\"record\": this is not JSON\n",
        _ => b"",
    };
    // SAFETY: the host passes a writable `out`.
    unsafe { out.write(Buf::from_vec(text.to_vec())) };
    OK
}

extern "C" fn close(handle: Handle) {
    // SAFETY: `handle` is the box `open` made, closed once.
    drop(unsafe { Box::from_raw(handle.cast::<u32>()) });
}

extern "C" fn free_buf(buf: Buf) {
    // SAFETY: every Buf the host holds came from `Buf::from_vec` here.
    drop(unsafe { buf.into_vec() });
}

extern "C" fn last_error(_: *mut Buf) -> i32 {
    ERR_INVALID
}

static DESCRIPTOR: PluginDescriptor = PluginDescriptor {
    abi_version: ABI_VERSION,
    manifest,
    schema,
    open,
    next_batch,
    close,
    free_buf,
    last_error,
};

#[unsafe(no_mangle)]
pub extern "C" fn fhirlift_plugin_v1() -> *const PluginDescriptor {
    &DESCRIPTOR
}
