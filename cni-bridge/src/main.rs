//! The `tailroute-bridge` CNI plugin binary.

use std::io::Read;

fn main() {
    let mut stdin = Vec::new();
    // A runtime always sends a config; an unreadable stdin is reported as
    // a decoding error by `run`.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let code = tailroute_bridge::run(
        |key| std::env::var(key).ok(),
        &stdin,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
