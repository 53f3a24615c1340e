//! Reference-model test: random trees, an interruption at a random page, random remote changes while
//! the mirror is down or mid-bootstrap; after the runs the mirror must equal the model exactly.
mod common;
use common::*;
use mountd_remote::Faults;
use rand::{Rng, SeedableRng};

fn random_bytes(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    let len = rng.random_range(0..300);
    if rng.random_bool(0.3) {
        (0..len).map(|_| rng.random()).collect()
    } else {
        (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect()
    }
}

fn random_path(rng: &mut rand::rngs::StdRng) -> String {
    let depth = rng.random_range(1..5);
    let mut p = String::new();
    for _ in 0..depth {
        p.push_str(&format!(
            "/{}",
            ["a", "b", "c", "dir", "ünï", "x y"][rng.random_range(0..6)]
        ));
    }
    format!("{p}/f{}", rng.random_range(0..40))
}

fn mutate(h: &mut Harness, rng: &mut rand::rngs::StdRng, n: usize) {
    for _ in 0..n {
        let keys: Vec<String> = h.expected.keys().cloned().collect();
        match rng.random_range(0..3) {
            0 if !keys.is_empty() => {
                let k = keys[rng.random_range(0..keys.len())].clone();
                h.delete(&k);
            }
            1 if !keys.is_empty() => {
                let k = keys[rng.random_range(0..keys.len())].clone();
                let b = random_bytes(rng);
                h.put(&k, &b);
            }
            _ => {
                let p = random_path(rng);
                // A new file may not sit where the model has a directory or file prefix of it.
                let clash = h
                    .expected
                    .keys()
                    .any(|k| k.starts_with(&format!("{p}/")) || p.starts_with(&format!("{k}/")));
                if !clash {
                    let b = random_bytes(rng);
                    h.put(&p, &b);
                }
            }
        }
    }
}

#[test]
fn interrupted_bootstraps_with_concurrent_changes_converge() {
    let mut interrupted = 0;
    for seed in 1..=4u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut h = Harness::with_page_size(rng.random_range(2..15));
        mutate(&mut h, &mut rng, 120);
        let export = rng.random_bool(0.5);
        // First run: a page hangs after a random number of pages; the watchdog stops the run.
        let hang_after = rng.random_range(1..6);
        h.set_faults(Faults {
            tree_hang_after: Some(hang_after),
            export_status: (!export).then(|| mountd_remote::ErrorFault::new(404, "not_found")),
            ..Default::default()
        });
        let depth = rng.random_range(1..4).to_string();
        let r = h.run(&[
            "--bootstrap-idle-timeout",
            "1s",
            "--read-timeout",
            "500ms",
            "--tree-depth",
            &depth,
        ]);
        // Later runs use the harness's roomier timeouts: a loaded machine must not trip them.
        let args = ["--tree-depth", depth.as_str()];
        assert!(r.code == 4 || r.code == 0, "seed {seed}: {}", r.all());
        interrupted += (r.code == 4) as u32;
        // Changes while the mirror is down.
        mutate(&mut h, &mut rng, 30);
        h.set_faults(Faults::default());
        let r = h.run(&args);
        assert_eq!(r.code, 0, "seed {seed}: {}", r.all());
        // More changes, then a catch-up run from the events feed.
        mutate(&mut h, &mut rng, 30);
        let r = h.run(&args);
        assert_eq!(r.code, 0, "seed {seed}: {}", r.all());
        h.assert_mirror_exact();
        let st = h.state();
        assert_eq!(
            st.tracked_files().unwrap() as usize,
            h.expected.len(),
            "seed {seed}: records match the tree"
        );
    }
    assert!(
        interrupted >= 2,
        "the seeds exercise interrupted bootstraps ({interrupted} of 4)"
    );
}
