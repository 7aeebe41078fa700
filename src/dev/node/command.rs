//! What process a container runs, with Kubernetes `command`/`args` semantics and no image.
//!
//! The only image the node can "run" is the project's own (see [`image_is_runnable`]): its
//! `ENTRYPOINT` is `/usr/local/bin/skein` and it has no `CMD`, so the local `skein` binary
//! stands in for it. `command` replaces the entrypoint and `args` the (empty) `CMD`; both are
//! `$(VAR)`-expanded with the container's environment, like the kubelet does.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use super::env::expand;

/// The last path segment of the image repositories the node can run.
pub const RUNNABLE_REPOSITORY: &str = "skein";

/// Whether `image` is the project image: its repository's last path segment, without
/// registry, tag and digest, is `skein` (`ghcr.io/skein-mesh/skein:0.1.0`,
/// `localhost:5000/skein`, `skein@sha256:...`).
pub fn image_is_runnable(image: &str) -> bool {
    repository_name(image) == RUNNABLE_REPOSITORY
}

/// `registry:port/path/name:tag@digest` → `name`.
fn repository_name(image: &str) -> &str {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    // A registry port's colon is in an earlier segment; only the last can hold a tag.
    let last = without_digest
        .rsplit_once('/')
        .map_or(without_digest, |(_, last)| last);
    last.split_once(':').map_or(last, |(name, _)| name)
}

/// The program to execute and its arguments (without `argv[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// A `command` whose program cannot be found; reported like a runtime's failed exec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("exec: {program:?}: {reason}")]
    NotFound { program: String, reason: String },
}

/// Resolves `container`'s process. Without `command`, the image entrypoint runs: the local
/// `skein_binary` with the expanded `args`. With one, its first element names the program:
/// `skein` (bare or as any path ending in `/skein`) is `skein_binary`; another absolute path
/// is used as is if it exists; a bare name is looked up in `host_path`. There is no image
/// filesystem, and the project image is Debian-based, so the host's tool of that name (a
/// shell, `iptables-restore`, ...) is the closest stand-in for the image's own.
pub fn resolve_command(
    container: &Container,
    env: &[(String, String)],
    skein_binary: &Path,
    host_path: &str,
) -> Result<ResolvedCommand, CommandError> {
    let expand_all = |items: Option<&Vec<String>>| -> Vec<String> {
        items
            .into_iter()
            .flatten()
            .map(|item| expand(item, env))
            .collect()
    };
    let args = expand_all(container.args.as_ref());
    let command = expand_all(container.command.as_ref());
    let Some((program, command_args)) = command.split_first() else {
        return Ok(ResolvedCommand {
            program: skein_binary.to_path_buf(),
            args,
        });
    };
    Ok(ResolvedCommand {
        program: resolve_program(program, skein_binary, host_path)?,
        args: command_args.iter().cloned().chain(args).collect(),
    })
}

fn resolve_program(
    program: &str,
    skein_binary: &Path,
    host_path: &str,
) -> Result<PathBuf, CommandError> {
    let path = Path::new(program);
    if path.file_name() == Some(OsStr::new(RUNNABLE_REPOSITORY)) {
        return Ok(skein_binary.to_path_buf());
    }
    let not_found = |reason: String| CommandError::NotFound {
        program: program.to_owned(),
        reason,
    };
    if path.is_absolute() {
        return if path.exists() {
            Ok(path.to_path_buf())
        } else {
            Err(not_found(format!(
                "stat {program}: no such file or directory"
            )))
        };
    }
    if program.contains('/') {
        // Relative to the image's working directory, which does not exist here.
        return Err(not_found(
            "a relative path needs the image's filesystem, which skein dev node does not have"
                .to_owned(),
        ));
    }
    if program.is_empty() {
        return Err(not_found("executable file not found in $PATH".to_owned()));
    }
    search_path(program, host_path)
        .ok_or_else(|| not_found("executable file not found in $PATH".to_owned()))
}

/// The first executable file `name` in the absolute directories of `host_path`. Empty and
/// relative entries are skipped: they would depend on the node's working directory.
fn search_path(name: &str, host_path: &str) -> Option<PathBuf> {
    host_path
        .split(':')
        .map(Path::new)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(value: serde_json::Value) -> Container {
        serde_json::from_value(value).expect("a valid container")
    }

    fn env() -> Vec<(String, String)> {
        vec![
            ("LEVEL".to_owned(), "debug".to_owned()),
            ("PORT".to_owned(), "8080".to_owned()),
        ]
    }

    const SKEIN: &str = "/opt/dev/target/debug/skein";

    #[test]
    fn runnable_images() {
        for image in [
            "ghcr.io/skein-mesh/skein:0.1.0",
            "skein",
            "skein:latest",
            "localhost:5000/x/skein@sha256:0123abcd",
            "localhost:5000/skein",
            "localhost:5000/skein:dev",
            "docker.io/library/skein",
        ] {
            assert!(image_is_runnable(image), "{image} should be runnable");
        }
        for image in [
            "nginx",
            "skein-operator",
            "ghcr.io/skein/other",
            "ghcr.io/skein-mesh/skein-proxy:0.1.0",
            "localhost:5000",
            "skein/nginx:skein",
            "",
        ] {
            assert!(!image_is_runnable(image), "{image} should not be runnable");
        }
    }

    #[test]
    fn no_command_runs_the_entrypoint_with_expanded_args() {
        let c = container(json!({"name": "c", "args": ["proxy", "--log=$(LEVEL)", "$$(PORT)"]}));
        let resolved = resolve_command(&c, &env(), Path::new(SKEIN), "/usr/bin").unwrap();
        assert_eq!(
            resolved,
            ResolvedCommand {
                program: PathBuf::from(SKEIN),
                args: vec!["proxy".into(), "--log=debug".into(), "$(PORT)".into()],
            }
        );
        let bare = container(json!({"name": "c"}));
        let resolved = resolve_command(&bare, &env(), Path::new(SKEIN), "/usr/bin").unwrap();
        assert!(resolved.args.is_empty());
        assert_eq!(resolved.program, PathBuf::from(SKEIN));
    }

    #[test]
    fn skein_commands_run_the_local_binary() {
        for program in ["skein", "/usr/local/bin/skein", "./skein"] {
            let c = container(json!({
                "name": "c",
                "command": [program, "init", "--port=$(PORT)"],
                "args": ["--verbose"],
            }));
            let resolved = resolve_command(&c, &env(), Path::new(SKEIN), "").unwrap();
            assert_eq!(resolved.program, PathBuf::from(SKEIN), "{program}");
            assert_eq!(resolved.args, ["init", "--port=8080", "--verbose"]);
        }
    }

    #[test]
    fn other_programs_come_from_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "not executable").unwrap();
        let host_path = format!("relative:/nonexistent:{}", dir.path().display());

        let c = container(json!({"name": "c", "command": ["tool", "-c", "$(LEVEL)"]}));
        let resolved = resolve_command(&c, &env(), Path::new(SKEIN), &host_path).unwrap();
        assert_eq!(resolved.program, tool);
        assert_eq!(resolved.args, ["-c", "debug"]);

        let c = container(json!({"name": "c", "command": [tool.to_str().unwrap()]}));
        let resolved = resolve_command(&c, &env(), Path::new(SKEIN), "").unwrap();
        assert_eq!(resolved.program, tool);

        let c = container(json!({"name": "c", "command": ["plain"]}));
        let err = resolve_command(&c, &env(), Path::new(SKEIN), &host_path).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"exec: "plain": executable file not found in $PATH"#
        );
    }

    #[test]
    fn missing_programs_are_not_found() {
        let cases = [
            (
                "/no/such/bin",
                "stat /no/such/bin: no such file or directory",
            ),
            ("no-such-tool-xyz", "executable file not found in $PATH"),
            ("", "executable file not found in $PATH"),
            ("bin/tool", "a relative path needs the image's filesystem"),
        ];
        for (program, reason) in cases {
            let c = container(json!({"name": "c", "command": [program]}));
            let err = resolve_command(&c, &env(), Path::new(SKEIN), "/usr/bin:/bin").unwrap_err();
            let CommandError::NotFound {
                program: named,
                reason: why,
            } = &err;
            assert_eq!(named, program);
            assert!(why.starts_with(reason), "{err}");
        }
    }

    #[test]
    fn the_program_name_is_expanded_too() {
        let env = vec![("BIN".to_owned(), "/usr/local/bin/skein".to_owned())];
        let c = container(json!({"name": "c", "command": ["$(BIN)", "version"]}));
        let resolved = resolve_command(&c, &env, Path::new(SKEIN), "").unwrap();
        assert_eq!(resolved.program, PathBuf::from(SKEIN));
        assert_eq!(resolved.args, ["version"]);
    }
}
