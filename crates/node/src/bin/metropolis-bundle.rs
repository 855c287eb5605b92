//! `metropolis-bundle`: makes an update bundle (see `node::update::bundle`) from a built
//! `metropolis-node`. The manifest's version is what the binary itself reports
//! (`metropolis-node --version`), so a bundle cannot claim a version its binary does not run
//! as. `--stamp-version` re-stamps the binary first (see `node::version`), e.g. to name a release or
//! to give tests a "new" version of the same code.

#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use node::update::bundle::{self, NODE_BINARY};
use proto::Version;

/// Makes an update bundle (a tar with a manifest and metropolis-node).
#[derive(Debug, Parser)]
#[command(name = "metropolis-bundle", version = node::version::text())]
struct Args {
    /// The metropolis-node binary to bundle.
    #[arg(long)]
    binary: PathBuf,
    /// Where to write the bundle.
    #[arg(long)]
    output: PathBuf,
    /// Re-stamp the binary with this version (`0.2.0-g1a2b3c4d`) before bundling it.
    #[arg(long)]
    stamp_version: Option<String>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("metropolis-bundle: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let mut binary = std::fs::read(&args.binary)
        .with_context(|| format!("reading {}", args.binary.display()))?;
    let wanted = match &args.stamp_version {
        Some(text) => {
            let v = Version::parse_semver(text)
                .with_context(|| format!("{text:?} is not a version like 0.2.0-g1a2b3c4d"))?;
            // A node would ignore such a stamp (the curator refuses it in status reports).
            v.check_bounds()
                .map_err(|e| anyhow::anyhow!("the version {text:?} {e}"))?;
            binary = node::version::stamp(&binary, &v);
            Some(v)
        }
        None => None,
    };
    let dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let reported = reported_version(dir, &binary)?;
    if let Some(w) = &wanted
        && *w != reported
    {
        bail!("the re-stamped binary reports {reported}, not {w}");
    }
    let mut out = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    bundle::write(&mut out, &reported, &[(NODE_BINARY, &binary, 0o755)])?;
    out.as_file_mut().flush()?;
    out.as_file().sync_all()?;
    out.persist(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!("{}: metropolis-node {reported}", args.output.display());
    Ok(())
}

/// The version `binary` reports, by running a copy of it with `--version`.
fn reported_version(dir: &Path, binary: &[u8]) -> Result<Version> {
    let mut copy = tempfile::NamedTempFile::new_in(dir)?;
    copy.write_all(binary)?;
    copy.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o755))?;
    // Executing a file that is open for writing fails (ETXTBSY): close it, keep the path.
    let path = copy.into_temp_path();
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .context("running the binary with --version")?;
    if !out.status.success() {
        bail!("the binary's --version failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("metropolis-node ")
        .and_then(Version::parse_semver)
        .with_context(|| {
            format!(
                "the binary printed {:?}, not a metropolis-node version",
                text.trim()
            )
        })
}
