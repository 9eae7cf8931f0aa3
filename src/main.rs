//! The `labeler` binary: parses the command line and runs the selected mode. Every error is
//! printed once, on one line with its causes, and exits non-zero.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = atmos_labeler::cli::parse();
    match atmos_labeler::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("labeler: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
