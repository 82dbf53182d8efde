//! The `beacon` binary; everything lives in the library's `cli` module.

fn main() {
    std::process::exit(beacon::cli::main());
}
