//! A plugin built for a future ABI (version 999) whose descriptor has
//! another layout: the host reads only its first field, the version, and
//! refuses it.

#[repr(C)]
pub struct FutureDescriptor {
    pub abi_version: u32,
    pub something_new: u64,
}

static DESCRIPTOR: FutureDescriptor = FutureDescriptor {
    abi_version: 999,
    something_new: 0,
};

#[unsafe(no_mangle)]
pub extern "C" fn fhirlift_plugin_v1() -> *const FutureDescriptor {
    &DESCRIPTOR
}
