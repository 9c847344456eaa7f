//! Generate the man pages and shell completions that the Debian package ships, from the
//! real clap `Command` of `obdgw` (so they cannot drift from `--help`).
//!
//! ```sh
//! cargo run --example gen-docs -- [OUT_DIR]      # default: target/gen-docs
//! ```
//!
//! Writes `OUT_DIR/man/obdgw.1` plus one page per subcommand (`obdgw-run.1`,
//! `obdgw-sim-cloud.1`, ...), and `OUT_DIR/completions/{obdgw.bash,_obdgw,obdgw.fish}`.
//! Used by `packaging/build-debs.sh` before `cargo deb`.

use clap::CommandFactory;
use clap_complete::Shell;
use obdgw::cli::Cli;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/gen-docs"));
    let man = out.join("man");
    let completions = out.join("completions");
    // Stale pages of renamed subcommands must not reach the package.
    for dir in [&man, &completions] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }

    // One page per (nested) subcommand; generate_to builds the command itself with the
    // help pseudo-subcommand disabled.
    clap_mangen::generate_to(Cli::command(), &man)?;

    let mut cmd = Cli::command();
    for (shell, file) in [
        (Shell::Bash, "obdgw.bash"),
        (Shell::Zsh, "_obdgw"),
        (Shell::Fish, "obdgw.fish"),
    ] {
        let written = clap_complete::generate_to(shell, &mut cmd, "obdgw", &completions)?;
        let want = completions.join(file);
        if written != want {
            std::fs::rename(&written, &want)?;
        }
    }

    let pages = std::fs::read_dir(&man)?.count();
    println!(
        "gen-docs: {pages} man pages in {}, completions for bash, zsh and fish in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}
