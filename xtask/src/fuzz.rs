//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` (one per input a
//! peer or an API object controls) with cargo-fuzz and libFuzzer, one
//! target at a time, each for `--time` seconds, and prints what each run
//! reached: executions per second, corpus entries, coverage.
//!
//! - cargo-fuzz is installed from crates.io when `cargo fuzz` does not run.
//! - The targets build with the stable toolchain: libFuzzer's
//!   instrumentation flags are unstable ones, so cargo-fuzz runs with
//!   `RUSTC_BOOTSTRAP=1`, as the eBPF build does. No sanitizer by default
//!   (the code under test is safe Rust; `--sanitizer address` builds with
//!   `AddressSanitizer` into a target directory of its own), with debug
//!   assertions and overflow checks on.
//! - The committed seeds (`fuzz/corpus/<target>/`) are read, never
//!   written: what a run finds goes to `target/fuzz-corpus/<target>/`,
//!   which later runs start from. Builds go to `target/fuzz/`.
//! - A crash stops that target's run; the others still run. The crashing
//!   input is written to `fuzz/artifacts/<target>/` (cargo-fuzz's place,
//!   ignored by git), the task prints its path and how to reproduce and
//!   minimise it, and exits 1. docs/building.md says how a crash becomes a
//!   regression test.

use std::{
    fmt::{self, Write as _},
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

/// Where the fuzz crate lives, from the workspace root.
pub const FUZZ_DIR: &str = "fuzz";

/// libFuzzer's limit for one input, in seconds: far beyond what any input
/// takes (time inside the targets is virtual), so hitting it is a hang.
const INPUT_TIMEOUT_SECS: u32 = 10;

/// `cargo xtask fuzz`'s command line.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// The targets to run, one after the other (see `--list`).
    #[arg(
        value_name = "TARGET",
        required_unless_present_any = ["all", "list"],
        conflicts_with = "all"
    )]
    pub targets: Vec<String>,
    /// Run every target, one after the other.
    #[arg(long)]
    pub all: bool,
    /// Print the targets, what each feeds, and its seeds; run nothing.
    #[arg(long, conflicts_with_all = ["targets", "all"])]
    pub list: bool,
    /// Seconds each target runs.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub time: u32,
    /// The sanitizer the targets are built with.
    #[arg(long, value_enum, default_value = "none")]
    pub sanitizer: Sanitizer,
    /// Extra arguments for libFuzzer, given after `--` (e.g. `-max_len=65536`).
    #[arg(last = true)]
    pub libfuzzer_args: Vec<String>,
}

/// A sanitizer cargo-fuzz can build with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sanitizer {
    /// None: the fastest runs; panics, hangs and failed assertions are found.
    None,
    /// `AddressSanitizer`: also memory errors in unsafe code, at half the speed.
    Address,
}

/// One fuzz target: `fuzz/fuzz_targets/<name>.rs`, seeds in
/// `fuzz/corpus/<name>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its name, as cargo-fuzz knows it.
    pub name: String,
    /// The first line of its `//!` docs: what it feeds and checks.
    pub summary: String,
}

/// What one target's run reached, from libFuzzer's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Average executions per second over the run.
    pub exec_per_sec: Option<u64>,
    /// Corpus entries at the end (the committed seeds and what was found).
    pub corpus: Option<u64>,
    /// Coverage: instrumented edges reached (libFuzzer's `cov:`).
    pub cov: Option<u64>,
    /// Features reached (libFuzzer's `ft:`: edges with hit counts and more).
    pub ft: Option<u64>,
    /// The crashing input, when libFuzzer wrote one.
    pub artifact: Option<PathBuf>,
}

/// How one target's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran for its time without a finding.
    Passed,
    /// It crashed (a panic, a failed assertion, a hang, running out of
    /// memory); the input is `RunStats::artifact`.
    Crashed,
}

/// Fuzz targets that crashed.
#[derive(Debug, thiserror::Error)]
#[error("{} fuzz target(s) found a crash: {}", .targets.len(), .targets.join(", "))]
pub struct FuzzCrashed {
    /// Their names.
    pub targets: Vec<String>,
}

/// Runs `cargo xtask fuzz` from the workspace `root`.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    let targets = targets(&root.join(FUZZ_DIR))?;
    if args.list {
        for target in &targets {
            let seeds = seed_count(root, &target.name);
            println!("{:<28} {seeds:>3} seeds  {}", target.name, target.summary);
        }
        return Ok(());
    }
    let chosen = choose(&targets, args)?;
    let mut present = Vec::new();
    setup::install_cargo_fuzz(&mut present)?;
    let build_all = chosen.len() > 1;
    let mut build = cargo_fuzz(root, "build", args.sanitizer);
    if !build_all {
        build.arg(&chosen[0].name);
    }
    cmd::run(&mut build)?;
    let mut results = Vec::new();
    for target in &chosen {
        println!("\n== fuzz {} for {} s ==", target.name, args.time);
        let started = Instant::now();
        let (outcome, stats) = run_target(root, target, args)?;
        results.push((target.name.clone(), outcome, stats, started.elapsed()));
    }
    println!("\n{}", summary_table(&results));
    let crashed: Vec<String> = results
        .iter()
        .filter(|(_, outcome, _, _)| *outcome == Outcome::Crashed)
        .map(|(name, ..)| name.clone())
        .collect();
    for (name, _, stats, _) in results.iter().filter(|r| r.1 == Outcome::Crashed) {
        println!(
            "{}",
            crash_hints(name, stats.artifact.as_deref(), args.sanitizer)
        );
    }
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(FuzzCrashed { targets: crashed }.into())
    }
}

/// The fuzz targets of the fuzz crate in `fuzz_dir`, by name.
pub fn targets(fuzz_dir: &Path) -> Result<Vec<Target>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut targets = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        let (Some(name), Some("rs")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|e| e.to_str()),
        ) else {
            continue;
        };
        let source =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        targets.push(Target {
            name: name.to_owned(),
            summary: summary_of(&source),
        });
    }
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(targets)
}

/// The first sentence of a target's `//!` docs, on one line.
fn summary_of(source: &str) -> String {
    let docs: Vec<&str> = source
        .lines()
        .map_while(|line| line.strip_prefix("//!"))
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let docs = docs.join(" ");
    match docs.find(": ").or_else(|| docs.find(". ")) {
        Some(end) => docs[..end].to_owned(),
        None => docs.trim_end_matches('.').to_owned(),
    }
}

/// The targets `args` names, or every target with `--all`; an unknown
/// name is an error that lists the known ones.
fn choose<'a>(targets: &'a [Target], args: &FuzzArgs) -> Result<Vec<&'a Target>> {
    if args.all {
        return Ok(targets.iter().collect());
    }
    args.targets
        .iter()
        .map(|name| {
            targets.iter().find(|t| t.name == *name).ok_or_else(|| {
                let known: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
                anyhow::anyhow!(
                    "no fuzz target {name:?}; the targets are: {}",
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// How many seeds `fuzz/corpus/<name>/` holds.
fn seed_count(root: &Path, name: &str) -> usize {
    fs::read_dir(root.join(FUZZ_DIR).join("corpus").join(name))
        .map_or(0, |entries| entries.filter_map(Result::ok).count())
}

/// `cargo fuzz <subcommand>` for the fuzz crate, built as every run builds
/// it: release with debug assertions, the sanitizer's own target directory,
/// the stable toolchain allowed cargo-fuzz's unstable flags.
fn cargo_fuzz(root: &Path, subcommand: &str, sanitizer: Sanitizer) -> Command {
    let mut cargo = cmd::cargo(root);
    cargo
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", subcommand, "--fuzz-dir", FUZZ_DIR])
        .arg("--target-dir")
        .arg(target_dir(sanitizer))
        .args([
            "--sanitizer",
            sanitizer_name(sanitizer),
            "--debug-assertions",
        ]);
    cargo
}

/// The build directory for `sanitizer`: builds with different flags never
/// share one, or each would rebuild everything after the other.
fn target_dir(sanitizer: Sanitizer) -> &'static str {
    match sanitizer {
        Sanitizer::None => "target/fuzz",
        Sanitizer::Address => "target/fuzz-address",
    }
}

fn sanitizer_name(sanitizer: Sanitizer) -> &'static str {
    match sanitizer {
        Sanitizer::None => "none",
        Sanitizer::Address => "address",
    }
}

/// Where a target's run writes the corpus entries it finds.
fn scratch_corpus(name: &str) -> PathBuf {
    Path::new("target/fuzz-corpus").join(name)
}

/// Runs one target for `args.time` seconds, passing libFuzzer's output on
/// (without its per-input lines) and reading its statistics from it.
fn run_target(root: &Path, target: &Target, args: &FuzzArgs) -> Result<(Outcome, RunStats)> {
    let scratch = scratch_corpus(&target.name);
    fs::create_dir_all(root.join(&scratch))
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let seeds = Path::new(FUZZ_DIR).join("corpus").join(&target.name);
    // The targets write throwaway files (a CA's key and certificate) under
    // the temporary directory, once per process, and libFuzzer's exit leaves
    // them: a directory of the run's own keeps them out of /tmp, and goes
    // with the run.
    let scratch_tmp = root.join("target/fuzz-tmp").join(&target.name);
    fs::create_dir_all(&scratch_tmp)
        .with_context(|| format!("cannot create {}", scratch_tmp.display()))?;
    let mut run = cargo_fuzz(root, "run", args.sanitizer);
    run.env("TMPDIR", &scratch_tmp)
        .arg(&target.name)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", args.time))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .args(&args.libfuzzer_args)
        .stderr(Stdio::piped());
    println!("$ {}", cmd::command_line(&run));
    let mut child = run
        .spawn()
        .with_context(|| format!("cannot start cargo fuzz for {}", target.name))?;
    let stderr = child.stderr.take().context("cargo fuzz's stderr")?;
    let mut stats = RunStats::default();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("cannot read cargo fuzz's output")?;
        stats.read_line(&line);
        if !is_per_input_line(&line) {
            eprintln!("{line}");
        }
    }
    let exit = child.wait().context("cargo fuzz did not finish")?;
    let _ = fs::remove_dir_all(&scratch_tmp);
    let outcome = if exit.success() {
        Outcome::Passed
    } else if stats.artifact.is_some() {
        Outcome::Crashed
    } else {
        bail!(
            "cargo fuzz for {} failed ({exit}) without a crashing input; its output above says why",
            target.name
        );
    };
    Ok((outcome, stats))
}

/// libFuzzer's lines for each new or reduced input and its dictionary:
/// hundreds per run, and the summary has what they add up to.
fn is_per_input_line(line: &str) -> bool {
    let progress =
        line.starts_with('#') && matches!(line.split_whitespace().nth(1), Some("NEW" | "REDUCE"));
    progress || line.contains("# Uses: ") || line.trim_start().starts_with("NEW_FUNC[")
}

// === impl RunStats ===

impl RunStats {
    /// Takes what `line` of libFuzzer's output says: its status lines
    /// (`#N DONE cov: 1 ft: 2 corp: 3/4Kb ... exec/s: 5 ...`), its final
    /// statistics, and where it wrote a crashing input.
    pub fn read_line(&mut self, line: &str) {
        if let Some(path) = line.split("Test unit written to ").nth(1) {
            self.artifact = Some(PathBuf::from(path.trim()));
        }
        if let Some(value) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = value.trim().parse().ok().or(self.exec_per_sec);
            return;
        }
        if !line.starts_with('#') {
            return;
        }
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            let value = || words.clone().next().and_then(|v| v.split('/').next());
            let number = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
            match word {
                "cov:" => self.cov = number(value()).or(self.cov),
                "ft:" => self.ft = number(value()).or(self.ft),
                "corp:" => self.corpus = number(value()).or(self.corpus),
                "exec/s:" => self.exec_per_sec = number(value()).or(self.exec_per_sec),
                _ => {}
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Passed => "ok",
            Self::Crashed => "CRASH",
        })
    }
}

/// The table printed at the end: one row per target.
fn summary_table(results: &[(String, Outcome, RunStats, std::time::Duration)]) -> String {
    let number = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let mut table = String::from(
        "| target | result | time | exec/s | corpus | cov | ft |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (name, outcome, stats, elapsed) in results {
        let _ = writeln!(
            table,
            "| {name} | {outcome} | {} s | {} | {} | {} | {} |",
            elapsed.as_secs(),
            number(stats.exec_per_sec),
            number(stats.corpus),
            number(stats.cov),
            number(stats.ft),
        );
    }
    table
}

/// What to do with a crash of `name` whose input is `artifact`.
fn crash_hints(name: &str, artifact: Option<&Path>, sanitizer: Sanitizer) -> String {
    let artifact = artifact.map_or_else(
        || format!("fuzz/artifacts/{name}/<crash file>"),
        |path| path.display().to_string(),
    );
    let flags = format!(
        "--fuzz-dir {FUZZ_DIR} --target-dir {} --sanitizer {} --debug-assertions",
        target_dir(sanitizer),
        sanitizer_name(sanitizer)
    );
    format!(
        "✗ {name} crashed on {artifact}\n  \
         reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run {name} {flags} {artifact}\n  \
         minimise:  RUSTC_BOOTSTRAP=1 cargo fuzz tmin {name} {flags} {artifact}\n  \
         then fix the defect and add the input as a regression test (docs/building.md, \"Fuzzing\")"
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// `cargo xtask`'s parser with only this task.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        task: Task,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Task {
        Fuzz(FuzzArgs),
    }

    fn parse(args: &[&str]) -> Result<FuzzArgs, clap::Error> {
        Cli::try_parse_from(["cargo xtask", "fuzz"].iter().chain(args)).map(
            |Cli {
                 task: Task::Fuzz(args),
             }| args,
        )
    }

    #[test]
    fn targets_or_all_or_list_and_a_time_in_seconds() {
        let args = parse(&["hbone_server", "--time", "30"]).unwrap();
        assert_eq!(args.targets, ["hbone_server"]);
        assert_eq!((args.all, args.list, args.time), (false, false, 30));
        assert_eq!(args.sanitizer, Sanitizer::None);

        let args = parse(&["--all", "--time", "120", "--", "-max_len=65536"]).unwrap();
        assert!(args.all && args.targets.is_empty());
        assert_eq!(
            (args.time, args.libfuzzer_args.as_slice()),
            (120, &["-max_len=65536".to_owned()][..])
        );

        let args = parse(&["a", "b", "--sanitizer", "address"]).unwrap();
        assert_eq!((args.targets.len(), args.time), (2, 60));
        assert_eq!(args.sanitizer, Sanitizer::Address);

        assert!(parse(&["--list"]).unwrap().list);
        // Nothing to run, a target with --all, a list with anything, no time.
        assert!(parse(&[]).is_err());
        assert!(parse(&["a", "--all"]).is_err());
        assert!(parse(&["--list", "--all"]).is_err());
        assert!(parse(&["--all", "--time", "0"]).is_err());
        assert!(parse(&["--all", "--time", "1.5"]).is_err());
    }

    #[test]
    fn libfuzzers_status_and_final_lines_give_the_runs_figures() {
        let mut stats = RunStats::default();
        for line in [
            "INFO: seed corpus: files: 371 min: 1b max: 3143b total: 75757b rss: 74Mb",
            "#372\tINITED cov: 1025 ft: 1942 corp: 301/66Kb exec/s: 0 rss: 74Mb",
            "#2097152\tpulse  cov: 1030 ft: 1990 corp: 305/70Kb lim: 4096 exec/s: 41943 rss: 80Mb",
            "#840911\tDONE   cov: 1031 ft: 2001 corp: 310/71Kb lim: 4096 exec/s: 40043 rss: 80Mb",
            "Done 840911 runs in 21 second(s)",
            "stat::average_exec_per_sec:     40040",
        ] {
            stats.read_line(line);
        }
        assert_eq!(
            stats,
            RunStats {
                exec_per_sec: Some(40040),
                corpus: Some(310),
                cov: Some(1031),
                ft: Some(2001),
                artifact: None,
            }
        );
        stats.read_line(
            "artifact_prefix='fuzz/artifacts/x/'; Test unit written to fuzz/artifacts/x/crash-0a1b",
        );
        assert_eq!(
            stats.artifact.as_deref(),
            Some(Path::new("fuzz/artifacts/x/crash-0a1b"))
        );
        assert!(is_per_input_line(
            "#1083\tREDUCE cov: 1025 ft: 1942 corp: 301/66Kb"
        ));
        assert!(is_per_input_line(
            "#31983\tNEW    cov: 1025 ft: 1944 corp: 302/66Kb"
        ));
        assert!(is_per_input_line("\tNEW_FUNC[1/2]: 0x55e27d2e8d71"));
        assert!(!is_per_input_line("#840911\tDONE   cov: 1031 ft: 2001"));
    }

    #[test]
    fn a_target_is_summarised_by_its_first_sentence() {
        assert_eq!(
            summary_of("//! The HBONE server: any bytes\n//! never panic.\n\nuse x;"),
            "The HBONE server"
        );
        assert_eq!(
            summary_of("//! Map values decode. More.\n"),
            "Map values decode"
        );
        assert_eq!(summary_of("//! One line.\n"), "One line");
    }

    /// Every target file is a `[[bin]]` of the fuzz crate and has seeds:
    /// a target that cargo-fuzz cannot build, or that starts from nothing,
    /// is caught here rather than in a run.
    #[test]
    fn every_fuzz_target_is_built_and_has_seeds() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let targets = targets(&root.join(FUZZ_DIR)).unwrap();
        assert!(!targets.is_empty());
        let manifest = fs::read_to_string(root.join(FUZZ_DIR).join("Cargo.toml")).unwrap();
        for target in &targets {
            let bin = format!(
                "name = \"{0}\"\npath = \"fuzz_targets/{0}.rs\"",
                target.name
            );
            assert!(
                manifest.contains(&bin),
                "fuzz/Cargo.toml lacks the [[bin]] {}",
                target.name
            );
            assert!(
                seed_count(root, &target.name) > 0,
                "{} has no seeds",
                target.name
            );
            assert!(
                !target.summary.is_empty(),
                "{} has no //! docs",
                target.name
            );
        }
        let args = FuzzArgs {
            targets: vec!["no_such_target".to_owned()],
            all: false,
            list: false,
            time: 1,
            sanitizer: Sanitizer::None,
            libfuzzer_args: Vec::new(),
        };
        let error = choose(&targets, &args).unwrap_err().to_string();
        assert!(error.contains(&targets[0].name), "{error}");
    }
}
