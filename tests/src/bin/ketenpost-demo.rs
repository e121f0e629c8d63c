//! `ketenpost-demo`: one client's case under the Walcheren covenant, from opening to
//! deletion, played by a real broker and three agents on loopback and told as a story.
//!
//! ```sh
//! cargo run --bin ketenpost-demo                      # the story on stdout
//! cargo run --bin ketenpost-demo -- --html fg.html    # also the FG's HTML report
//! ```
//!
//! Exit code 0 when every step behaved as expected, 1 (with the failing step on stderr)
//! when one did not, 64 on a bad argument. Logs of the broker and agents go to stderr,
//! filtered by `RUST_LOG` (default `warn`, without the agents' warnings about what the
//! story tells anyway). The story itself is in `ketenpost_tests::demo`.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use ketenpost_tests::demo::{self, Options};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: ketenpost-demo [--html FILE] [--no-colour]";

fn main() -> ExitCode {
    let mut opts = Options {
        colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        html_report: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--html" => match args.next() {
                Some(path) => opts.html_report = Some(PathBuf::from(path)),
                None => return usage("--html needs a file name"),
            },
            "--no-colour" | "--no-color" => opts.colour = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument '{other}'")),
        }
    }

    // The agents' sync loop warns about what the story tells anyway (a message the broker
    // refused, a breach notice to hand to the FG, a deletion order carried out), so those
    // are left out unless RUST_LOG asks for them; everything else logs from `warn` up.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,ketenpost_agent::sync=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match demo::run(&mut out, &opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("\nketenpost-demo: FAILED: {e:#}");
            eprintln!("(RUST_LOG=info shows what the broker and the agents logged.)");
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("ketenpost-demo: {problem}\n{USAGE}");
    ExitCode::from(64)
}
