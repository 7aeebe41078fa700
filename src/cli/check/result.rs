//! What one check found, and the whole report: rendered as ✔/✖/‼ lines grouped like
//! `linkerd check`, or as JSON/YAML; the exit code follows from it. Pure: no I/O here.

use serde::Serialize;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works now, but will not for long or could not be fully checked: does not fail the run.
    Warning,
    Fail,
}

impl Status {
    fn symbol(self) -> char {
        match self {
            Self::Ok => '✔',
            Self::Warning => '‼',
            Self::Fail => '✖',
        }
    }
}

/// One check's result: a stable `id` scripts can match on, one line saying what was found
/// (the cause, when it failed) and, unless it passed, what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub id: &'static str,
    pub group: &'static str,
    pub status: Status,
    /// What the check looks at, the same whatever it finds.
    pub description: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl CheckResult {
    pub fn ok(check: Check, message: impl Into<String>) -> Self {
        check.result(Status::Ok, message.into(), None)
    }

    pub fn warning(check: Check, message: impl Into<String>, hint: impl Into<String>) -> Self {
        check.result(Status::Warning, message.into(), Some(hint.into()))
    }

    pub fn fail(check: Check, message: impl Into<String>, hint: impl Into<String>) -> Self {
        check.result(Status::Fail, message.into(), Some(hint.into()))
    }
}

/// A check's identity: its stable ID, its group and what it looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub id: &'static str,
    pub group: &'static str,
    pub description: &'static str,
}

impl Check {
    fn result(self, status: Status, message: String, hint: Option<String>) -> CheckResult {
        CheckResult {
            id: self.id,
            group: self.group,
            status,
            description: self.description,
            message,
            hint,
        }
    }
}

/// What `skein check` prints with `-o json|yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// False when any check failed (warnings do not count): the exit code is then 1.
    pub success: bool,
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn new(checks: Vec<CheckResult>) -> Self {
        Self {
            success: checks.iter().all(|c| c.status != Status::Fail),
            checks,
        }
    }

    pub fn exit_code(&self) -> u8 {
        u8::from(!self.success)
    }
}

/// The table: a heading per group (in the order checks ran), one line per check, the cause and
/// the fix indented under anything that did not pass, and a closing verdict.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let mut group = "";
    for check in &report.checks {
        if check.group != group {
            if !group.is_empty() {
                out.push('\n');
            }
            group = check.group;
            out.push_str(&format!("{group}\n{}\n", "-".repeat(group.len())));
        }
        out.push_str(&format!(
            "{} {} [{}]\n",
            check.status.symbol(),
            check.description,
            check.id
        ));
        if check.status != Status::Ok || !check.message.is_empty() {
            out.push_str(&format!("    {}\n", check.message));
        }
        if let Some(hint) = &check.hint {
            out.push_str(&format!("    fix: {hint}\n"));
        }
    }
    let (failed, warned) = (
        report
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count(),
        report
            .checks
            .iter()
            .filter(|c| c.status == Status::Warning)
            .count(),
    );
    out.push_str(&match (failed, warned) {
        (0, 0) => "\nStatus check results are ✔\n".to_owned(),
        (0, w) => format!("\nStatus check results are ✔ ({w} warning(s) ‼)\n"),
        (f, _) => format!("\nStatus check results are ✖ ({f} failed)\n"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: Check = Check {
        id: "kubernetes-api",
        group: "kubernetes-api",
        description: "can reach the Kubernetes API",
    };
    const CRDS: Check = Check {
        id: "crds",
        group: "skein-install",
        description: "the Skein CRDs are installed",
    };

    #[test]
    fn any_failure_fails_the_run_and_warnings_do_not() {
        let ok = Report::new(vec![
            CheckResult::ok(API, "v1.37"),
            CheckResult::warning(CRDS, "differs", "apply"),
        ]);
        assert!(ok.success);
        assert_eq!(ok.exit_code(), 0);
        let failed = Report::new(vec![
            CheckResult::ok(API, "v1.37"),
            CheckResult::fail(CRDS, "missing", "apply"),
        ]);
        assert!(!failed.success);
        assert_eq!(failed.exit_code(), 1);
        assert_eq!(Report::new(Vec::new()).exit_code(), 0);
    }

    #[test]
    fn the_table_groups_checks_and_names_cause_and_fix() {
        let report = Report::new(vec![
            CheckResult::ok(API, "v1.37.2"),
            CheckResult::fail(
                CRDS,
                "egressrules.skein.dev is missing",
                "skein crds | kubectl apply -f -",
            ),
        ]);
        assert_eq!(
            table(&report),
            "kubernetes-api\n--------------\n\
             ✔ can reach the Kubernetes API [kubernetes-api]\n    v1.37.2\n\n\
             skein-install\n-------------\n\
             ✖ the Skein CRDs are installed [crds]\n    egressrules.skein.dev is missing\n    \
             fix: skein crds | kubectl apply -f -\n\n\
             Status check results are ✖ (1 failed)\n"
        );
    }

    #[test]
    fn json_names_fields_for_scripts() {
        let report = Report::new(vec![CheckResult::warning(CRDS, "m", "h")]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"success": true, "checks": [{
                "id": "crds", "group": "skein-install", "status": "warning",
                "description": "the Skein CRDs are installed", "message": "m", "hint": "h"
            }]})
        );
    }
}
