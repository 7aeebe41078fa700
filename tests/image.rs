//! The container image: the Dockerfile's build stage copies every file the build reads. No
//! container engine runs here, so the test lays out what the stage would see (exactly the
//! files its `COPY` lines copy from the build context, less what .dockerignore leaves out) in a
//! temporary directory and compiles the workspace there: a missing input (src/core/build.rs,
//! proto/, a bench the manifest names, a member crate's manifest, the lockfile) fails it.

mod support;

use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The stage that compiles the binary.
const BUILD_STAGE: &str = "build";

/// One `COPY` from the build context: its sources (relative to the context) and its
/// destination (relative to the stage's WORKDIR, empty for the WORKDIR itself), and whether that
/// is a directory the sources go into (a trailing `/`, or several sources) rather than the
/// path a single source becomes.
#[derive(Debug, PartialEq)]
struct Copy {
    sources: Vec<String>,
    dest: PathBuf,
    into_dir: bool,
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped, as
/// (instruction in upper case, arguments).
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        // Comments (and parser directives) end no instruction: they may sit between
        // continuation lines.
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let line = std::mem::take(&mut current);
        let (instruction, arguments) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        out.push((instruction.to_uppercase(), arguments.trim().to_owned()));
    }
    out
}

/// The `COPY` lines of stage `stage` that copy from the build context (not `--from` another
/// stage or image), with destinations relative to the stage's WORKDIR.
fn context_copies(dockerfile: &str, stage: &str) -> Result<Vec<Copy>, String> {
    let mut in_stage = false;
    let mut found_stage = false;
    let mut workdir = PathBuf::from("/");
    let mut copies = Vec::new();
    for (instruction, arguments) in instructions(dockerfile) {
        match instruction.as_str() {
            "FROM" => {
                let words: Vec<&str> = arguments.split_whitespace().collect();
                in_stage = matches!(words.as_slice(), [.., as_, name] if as_.eq_ignore_ascii_case("as") && *name == stage);
                found_stage |= in_stage;
            }
            "WORKDIR" if in_stage => workdir = workdir.join(&arguments),
            "COPY" | "ADD" if in_stage => {
                let mut words = arguments.split_whitespace().peekable();
                let mut from_elsewhere = false;
                while let Some(flag) = words.next_if(|word| word.starts_with("--")) {
                    from_elsewhere |= flag.starts_with("--from=");
                }
                if from_elsewhere {
                    continue;
                }
                if instruction == "ADD" {
                    return Err(format!(
                        "ADD {arguments}: use COPY for files of the context"
                    ));
                }
                let rest: Vec<String> = words.map(str::to_owned).collect();
                let mut paths = if rest.first().is_some_and(|word| word.starts_with('[')) {
                    serde_json::from_str::<Vec<String>>(&rest.join(" "))
                        .map_err(|err| format!("COPY {arguments}: {err}"))?
                } else {
                    rest
                };
                let Some(dest) = paths.pop().filter(|_| !paths.is_empty()) else {
                    return Err(format!(
                        "COPY {arguments}: needs a source and a destination"
                    ));
                };
                if let Some(glob) = paths.iter().find(|p| p.contains(['*', '?', '['])) {
                    return Err(format!(
                        "COPY {glob}: wildcards are not understood by this test"
                    ));
                }
                let relative = workdir
                    .join(&dest)
                    .strip_prefix(&workdir)
                    .map_err(|_| format!("COPY to {dest}: outside the WORKDIR {workdir:?}"))?
                    .to_owned();
                if relative.components().any(|c| c == Component::ParentDir) {
                    return Err(format!("COPY to {dest}: outside the WORKDIR {workdir:?}"));
                }
                copies.push(Copy {
                    into_dir: dest.ends_with('/') || paths.len() > 1,
                    sources: paths,
                    dest: relative,
                });
            }
            _ => {}
        }
    }
    if !found_stage {
        return Err(format!("no stage `FROM ... AS {stage}`"));
    }
    Ok(copies)
}

/// The patterns of a .dockerignore (comments and blank lines dropped, `/` trimmed at both ends).
fn ignore_patterns(dockerignore: &str) -> Vec<String> {
    dockerignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_matches('/').to_owned())
        .collect()
}

/// Whether `path` (relative to the context) is left out by `patterns`, as Docker reads them: a
/// pattern naming a directory leaves out all of it, and a later `!pattern` takes a path back in.
fn is_ignored(patterns: &[String], path: &Path) -> bool {
    let segments: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let mut ignored = false;
    for pattern in patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        let pattern: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        // The path itself or a directory above it.
        if (1..=segments.len()).any(|n| glob_path(&pattern, &segments[..n])) {
            ignored = !negated;
        }
    }
    ignored
}

/// Matches path segments against pattern segments: `**` matches any number of segments, `*`
/// and `?` match within one.
fn glob_path(pattern: &[&str], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| glob_path(rest, &path[skip..])),
        Some((first, rest)) => path.split_first().is_some_and(|(segment, tail)| {
            glob_segment(first.as_bytes(), segment.as_bytes()) && glob_path(rest, tail)
        }),
    }
}

fn glob_segment(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_segment(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob_segment(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob_segment(rest, &text[1..]),
    }
}

/// Copies `source` (relative to `context`) to `to` as `COPY` does: a file to `to`, a
/// directory's contents (not the directory itself) into `to`, leaving out what `ignored` names.
/// Copies keep their modification times (see the test).
fn copy_from_context(
    context: &Path,
    source: &Path,
    to: &Path,
    ignored: &dyn Fn(&Path) -> bool,
) -> std::io::Result<()> {
    let from = context.join(source);
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(&from)? {
            let name = entry?.file_name();
            let child = source.join(&name);
            if !ignored(&child) {
                copy_from_context(context, &child, &to.join(&name), ignored)?;
            }
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, to)?;
    }
    // A directory's last, once its entries are in.
    let modified = std::fs::metadata(&from)?.modified()?;
    std::fs::File::open(to)?.set_modified(modified)
}

/// Lays out in `workdir` what the build stage's `COPY` lines copy from `context`.
fn lay_out_build_stage(context: &Path, workdir: &Path) -> Result<(), String> {
    let dockerfile = std::fs::read_to_string(context.join("Dockerfile"))
        .map_err(|err| format!("reading the Dockerfile: {err}"))?;
    let patterns = std::fs::read_to_string(context.join(".dockerignore"))
        .map(|text| ignore_patterns(&text))
        .unwrap_or_default();
    let ignored = |path: &Path| is_ignored(&patterns, path);
    for copy in context_copies(&dockerfile, BUILD_STAGE)? {
        for source in &copy.sources {
            let source = Path::new(source);
            if source
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(format!(
                    "COPY {}: outside the build context",
                    source.display()
                ));
            }
            if !context.join(source).exists() || ignored(source) {
                return Err(format!(
                    "COPY {}: not in the build context (missing, or left out by .dockerignore)",
                    source.display()
                ));
            }
            let to = if copy.into_dir && context.join(source).is_file() {
                workdir
                    .join(&copy.dest)
                    .join(source.file_name().unwrap_or_default())
            } else {
                workdir.join(&copy.dest)
            };
            copy_from_context(context, source, &to, &ignored)
                .map_err(|err| format!("copying {}: {err}", source.display()))?;
        }
    }
    Ok(())
}

#[test]
fn the_build_stage_copies_every_file_the_build_reads() {
    let context = support::source_dir();
    let workdir = tempfile::tempdir().expect("creating a temporary directory");
    lay_out_build_stage(context, workdir.path()).unwrap_or_else(|err| panic!("Dockerfile: {err}"));

    // `cargo check --locked --bin skein --bin skein-proxy`, not the image's `cargo build
    // --release`: a check runs src/core/build.rs (which is what reads proto/), loads the
    // manifests (the top one names the benches) and the lockfile, and expands every include! of
    // the binaries' code, in seconds, where a release build would take many minutes. It shares
    // the target dir the tests were built in. `--profile test` checks the binaries in test
    // mode, which resolves features with the dev-dependencies as `cargo clippy --all-targets`
    // and `cargo test` do, so every dependency is already checked there; a plain check resolves
    // them without, and would check most of them again, cold. (The price: a feature only a
    // dev-dependency turns on would go unnoticed here; the libraries themselves are checked
    // without cfg(test), as the binaries' dependencies.) The copies keep their modification
    // times: cargo's fingerprints list every file a unit read, and a missing one (or a unit
    // graph without build.rs) counts as a change, so what the stage lacks is compiled and
    // fails, while what it has is not compiled again, nor is the build script, whose output
    // the test build shares, run again.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| context.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut check = Command::new(cargo);
    check
        .args([
            "check",
            "--locked",
            "--bin",
            "skein",
            "--bin",
            "skein-proxy",
        ])
        .args(["--profile", "test"])
        .current_dir(workdir.path())
        .env("CARGO_TARGET_DIR", &target_dir);
    // What `cargo test` sets for the tests it runs, which the cargo that built them did not
    // have: OUT_DIR would stand in for env!("OUT_DIR") in a crate without build.rs, and a
    // dependency's build script that watches CARGO_MANIFEST_DIR (ring's) would run again,
    // making the next test build recompile everything above it.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if matches!(
            name.as_ref(),
            "OUT_DIR" | "CARGO_MANIFEST_DIR" | "CARGO_MANIFEST_PATH" | "CARGO_CRATE_NAME"
        ) || name.starts_with("CARGO_PKG_")
        {
            check.env_remove(name.as_ref());
        }
    }
    let output = check.output().expect("running cargo check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The first errors say what is missing; the rest follow from them.
    let head: Vec<&str> = stderr.lines().take(60).collect();
    assert!(
        output.status.success(),
        "the crate does not build from what the Dockerfile's build stage copies \
         (in {}):\n{}",
        workdir.path().display(),
        head.join("\n")
    );
}

#[test]
fn copies_are_read_as_docker_reads_them() {
    let dockerfile = "\
# syntax=docker/dockerfile:1
FROM rust AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY --chown=1:1 \\
    # a comment between continuation lines
    src src
COPY [\"a b\", \"dir/\"]
COPY --from=other /x /y
FROM debian
COPY --from=build /skein /usr/local/bin/skein
COPY README.md /
";
    assert_eq!(
        context_copies(dockerfile, "build").unwrap(),
        [
            Copy {
                sources: vec!["Cargo.toml".into(), "Cargo.lock".into()],
                dest: "".into(),
                into_dir: true,
            },
            Copy {
                sources: vec!["src".into()],
                dest: "src".into(),
                into_dir: false,
            },
            Copy {
                sources: vec!["a b".into()],
                dest: "dir".into(),
                into_dir: true,
            },
        ]
    );
    assert!(context_copies(dockerfile, "release").is_err());
}

#[test]
fn dockerignore_is_read_as_docker_reads_it() {
    let patterns = ignore_patterns("# comment\n/target/\n**/*.rs.bk\ndocs\n!docs/keep.md\n");
    let ignored = |path: &str| is_ignored(&patterns, Path::new(path));
    assert!(ignored("target"));
    assert!(ignored("target/debug/skein"));
    assert!(!ignored("src/target.rs"));
    assert!(ignored("src/api/crds.rs.bk"));
    assert!(ignored("main.rs.bk"));
    assert!(ignored("docs/other.md"));
    assert!(!ignored("docs/keep.md"));
    assert!(!ignored("src/main.rs"));
}
