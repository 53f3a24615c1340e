//! `mountd completions SHELL` and `mountd man`: generated from the clap definitions, so they never
//! drift from the real flags. `scripts/gen-man.sh` writes `target/man/mountd.1` and the completion
//! scripts for packaging.
use crate::cli::args::Cli;
use clap::CommandFactory;
use std::io::Write;

pub fn completions(shell: clap_complete::Shell) -> i32 {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "mountd", &mut std::io::stdout());
    0
}

pub fn man() -> i32 {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd);
    if let Err(e) = man.render(&mut out) {
        eprintln!("mountd man: {e}");
        return crate::cli::exit::FAILED;
    }
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(&out).and_then(|_| stdout.flush()).is_err() {
        return crate::cli::exit::FAILED;
    }
    0
}
