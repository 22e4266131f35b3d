//! The `fhirlift` command. All the work is in the library: see `fhirlift::run`.

fn main() -> std::process::ExitCode {
    let code = fhirlift::run(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::ExitCode::from(code)
}
