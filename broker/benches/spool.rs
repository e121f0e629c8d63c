//! Micro-benchmark of the spool's durable append: a round of appends and the `fdatasync`
//! that makes them durable, in the spool (whose active segment is written with zeros
//! ahead of its appends, [`ketenpost_broker::spool::PREWRITE_BYTES`]) against a plain
//! file that grows with every append, as the spool did before.
//!
//! ```text
//! cargo bench -p ketenpost-broker --bench spool
//! ```
//!
//! The two alternate round by round in one directory of the data disk (`target/`), so
//! both see the same disk at the same moment; on a shared machine that is the only fair
//! comparison. A round is one 1.2 KiB body (a message of the load benchmark) and its sync,
//! as at 1,000 msg/s. Without `--bench` on the command line it does nothing.
#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use ketenpost_broker::spool::Spool;

const ROUNDS: usize = 3000;
const BODY: usize = 1200;

fn percentiles(mut us: Vec<f64>) -> String {
    us.sort_by(f64::total_cmp);
    let at = |p: f64| us[((us.len() as f64 * p) as usize).min(us.len() - 1)];
    format!(
        "p50 {:7.1} us, p90 {:7.1} us, p99 {:7.1} us, max {:8.1} us",
        at(0.5),
        at(0.9),
        at(0.99),
        us[us.len() - 1]
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("spool: a benchmark; run it with `cargo bench -p ketenpost-broker --bench spool`");
        return;
    }
    // On the disk the broker's data would be on, not in a tmpfs.
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let plain = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(dir.path().join("growing.seg"))
        .unwrap();
    let body = vec![0x5a; BODY];
    let (mut prewritten, mut growing) = (Vec::new(), Vec::new());
    let mut end = 0u64;
    for n in 0..ROUNDS {
        let id = [(n % 251) as u8; 16];
        let t = Instant::now();
        spool.append(&id, &body).unwrap();
        spool.sync().unwrap();
        prewritten.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        plain.write_all_at(&body, end).unwrap();
        plain.sync_data().unwrap();
        growing.push(t.elapsed().as_secs_f64() * 1e6);
        end += body.len() as u64;
    }
    println!("spool: {ROUNDS} rounds of one {BODY}-byte append and its fdatasync, alternating:");
    println!("  spool, zeros written ahead: {}", percentiles(prewritten));
    println!("  a file that grows:          {}", percentiles(growing));
}
