//! A policy version as governance staff edit it: policy files (`*.cedar`) and the test case
//! files that pin their behaviour (`tests/*.json`), checked together. Pure.
//!
//! The Cedar schema is not part of a version: it is the gateway's contract with its own code
//! (which attributes it supplies), so it changes with the gateway, not in the console.

use std::path::Path;

use serde::Serialize;

use crate::cases::{self, Case, Outcome};
use crate::{PolicyError, PolicySet, Problem};

/// A file of a version: `10-direct-care.cedar`, or `tests/default.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// Where a version's test cases live, by name.
pub const TESTS_PREFIX: &str = "tests/";

/// Is `name` an acceptable file name? Policies are `*.cedar` at the top, cases
/// `tests/*.json`; names are plain (letters, digits, `-`, `_`, `.`), no paths beyond that.
pub fn acceptable_name(name: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 80
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match name.strip_prefix(TESTS_PREFIX) {
        Some(rest) => plain(rest) && rest.ends_with(".json"),
        None => plain(name) && name.ends_with(".cedar"),
    }
}

/// Reads a policy directory as a version: `default/*.cedar` and `tests/*.json`, name order.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyError> {
    let mut out = Vec::new();
    for (sub, ext, prefix) in [("default", "cedar", ""), ("tests", "json", TESTS_PREFIX)] {
        let d = dir.join(sub);
        if sub == "tests" && !d.is_dir() {
            continue;
        }
        let mut paths: Vec<_> = std::fs::read_dir(&d)
            .map_err(|e| PolicyError::Read {
                path: d.display().to_string(),
                message: e.to_string(),
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        paths.sort();
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|e| PolicyError::Read {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(SourceFile {
                name: format!("{prefix}{name}"),
                text,
            });
        }
    }
    Ok(out)
}

/// What checking a version found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Parse, schema and file problems, with file, line and column.
    pub problems: Vec<Problem>,
    /// Every test case's outcome (empty when the policies do not parse).
    pub cases: Vec<Outcome>,
    pub cases_passed: usize,
    pub cases_failed: usize,
}

impl Report {
    /// May the version be activated: no problems, and every case passes?
    pub fn activatable(&self) -> bool {
        self.problems.is_empty() && self.cases_failed == 0
    }
}

/// Checks a version: file names, policies against the schema, test case files, then runs the
/// cases. Returns the built set when the policies are valid (even if cases fail).
pub fn check(schema: &str, files: &[SourceFile]) -> (Report, Option<PolicySet>) {
    let mut report = Report::default();
    let mut policies = Vec::new();
    let mut case_files: Vec<(String, Vec<Case>)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in files {
        if !acceptable_name(&f.name) {
            report.problems.push(Problem::whole_file(
                &f.name,
                "a file is named like 10-rule.cedar (a policy) or tests/cases.json (test cases): letters, digits, '-', '_' and '.'",
            ));
            continue;
        }
        if !seen.insert(f.name.as_str()) {
            report
                .problems
                .push(Problem::whole_file(&f.name, "two files have this name"));
            continue;
        }
        if f.name.starts_with(TESTS_PREFIX) {
            match serde_json::from_str::<Vec<Case>>(&f.text) {
                Ok(c) => case_files.push((f.name.clone(), c)),
                Err(e) => report.problems.push(Problem {
                    file: f.name.clone(),
                    line: e.line().max(1),
                    column: e.column().max(1),
                    message: format!("test cases: {e}"),
                }),
            }
        } else {
            policies.push((f.name.clone(), f.text.clone()));
        }
    }
    let set = match PolicySet::from_sources(schema, policies) {
        Ok(set) => Some(set),
        Err(PolicyError::Invalid(problems)) => {
            report.problems.extend(problems);
            None
        }
        Err(e) => {
            report.problems.push(Problem::whole_file("", e.to_string()));
            None
        }
    };
    if let Some(set) = &set {
        report.cases = cases::run(set, &case_files);
        report.cases_passed = report.cases.iter().filter(|o| o.passed).count();
        report.cases_failed = report.cases.len() - report.cases_passed;
    }
    (report, set)
}

/// A version that must be activatable: the set, or why not.
pub fn build(schema: &str, files: &[SourceFile]) -> Result<PolicySet, PolicyError> {
    let (report, set) = check(schema, files);
    if !report.problems.is_empty() {
        return Err(PolicyError::Invalid(report.problems));
    }
    if report.cases_failed > 0 {
        return Err(PolicyError::CasesFail(
            report
                .cases
                .iter()
                .filter(|o| !o.passed)
                .map(|o| format!("{}: {}: {}", o.file, o.name, o.detail))
                .collect(),
        ));
    }
    set.ok_or(PolicyError::Empty)
}

/// How a file changed between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

/// One file's difference: a unified diff with three lines of context.
#[derive(Debug, Clone, Serialize)]
pub struct FileDiff {
    pub name: String,
    pub change: Change,
    pub unified: String,
    pub added_lines: usize,
    pub removed_lines: usize,
}

/// The files that differ between `old` and `new`, in name order.
pub fn diff(old: &[SourceFile], new: &[SourceFile]) -> Vec<FileDiff> {
    use std::collections::BTreeMap;
    let index = |files: &[SourceFile]| -> BTreeMap<String, String> {
        files
            .iter()
            .map(|f| (f.name.clone(), f.text.clone()))
            .collect()
    };
    let (old, new) = (index(old), index(new));
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let (a, b) = (old.get(name), new.get(name));
        if a == b {
            continue;
        }
        let change = match (a, b) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Changed,
        };
        let (a, b) = (a.map_or("", String::as_str), b.map_or("", String::as_str));
        let text_diff = similar::TextDiff::from_lines(a, b);
        let (mut added_lines, mut removed_lines) = (0, 0);
        for op in text_diff.iter_all_changes() {
            match op.tag() {
                similar::ChangeTag::Insert => added_lines += 1,
                similar::ChangeTag::Delete => removed_lines += 1,
                similar::ChangeTag::Equal => {}
            }
        }
        let unified = text_diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("active/{name}"), &format!("draft/{name}"))
            .to_string();
        out.push(FileDiff {
            name: name.clone(),
            change,
            unified,
            added_lines,
            removed_lines,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/schema.cedarschema"),
        )
        .unwrap()
    }

    fn default_version() -> Vec<SourceFile> {
        read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")).unwrap()
    }

    #[test]
    fn the_default_directory_is_an_activatable_version() {
        let files = default_version();
        assert!(files.iter().any(|f| f.name == "tests/default.json"));
        let (report, set) = check(&schema(), &files);
        assert!(report.activatable(), "{:#?}", report.problems);
        assert!(report.cases_passed > 100);
        assert!(set.is_some());
    }

    #[test]
    fn a_broken_policy_names_its_file_line_and_column() {
        let mut files = default_version();
        let f = files
            .iter_mut()
            .find(|f| f.name == "30-consent.cedar")
            .unwrap();
        f.text.push_str("\n@id(\"broken\")\npermit (principal, action, resource) when { principal.nonesuch };\n");
        let lines = f.text.lines().count();
        let (report, set) = check(&schema(), &files);
        assert!(set.is_none());
        assert!(!report.activatable());
        let p = &report.problems[0];
        assert_eq!(p.file, "30-consent.cedar");
        assert_eq!(p.line, lines, "{p}");
        assert!(p.column > 1, "{p}");
    }

    #[test]
    fn a_change_that_breaks_a_case_is_not_activatable() {
        let mut files = default_version();
        files.push(SourceFile {
            name: "90-no-allergies.cedar".into(),
            text: "@id(\"no-allergies\")\nforbid (principal, action == Gateway::Action::\"read:AllergyIntolerance\", resource);\n".into(),
        });
        let (report, set) = check(&schema(), &files);
        assert!(report.problems.is_empty());
        assert!(set.is_some());
        assert!(report.cases_failed > 0);
        assert!(!report.activatable());
        assert!(matches!(
            build(&schema(), &files),
            Err(PolicyError::CasesFail(_))
        ));
    }

    #[test]
    fn bad_names_and_bad_case_files_are_problems() {
        let mut files = default_version();
        files.push(SourceFile {
            name: "../etc/passwd".into(),
            text: String::new(),
        });
        files.push(SourceFile {
            name: "tests/extra.json".into(),
            text: "[\n  {\"name\": 1}\n]".into(),
        });
        let (report, _) = check(&schema(), &files);
        let names: Vec<&str> = report.problems.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(names, ["../etc/passwd", "tests/extra.json"]);
        assert_eq!(report.problems[1].line, 2);
    }

    #[test]
    fn diff_names_added_removed_and_changed_files() {
        let old = default_version();
        let mut new = old.clone();
        new.retain(|f| f.name != "40-sensitive.cedar");
        new[0].text = new[0].text.replacen("permit", "forbid", 1);
        new.push(SourceFile {
            name: "99-new.cedar".into(),
            text: "// new\n".into(),
        });
        let d = diff(&old, &new);
        let summary: Vec<(&str, &Change)> =
            d.iter().map(|f| (f.name.as_str(), &f.change)).collect();
        assert_eq!(
            summary,
            [
                (old[0].name.as_str(), &Change::Changed),
                ("40-sensitive.cedar", &Change::Removed),
                ("99-new.cedar", &Change::Added),
            ]
        );
        assert_eq!((d[0].added_lines, d[0].removed_lines), (1, 1));
        assert!(
            d[0].unified
                .lines()
                .any(|l| l.starts_with('+') && l.contains("forbid")),
            "{}",
            d[0].unified
        );
        assert!(diff(&old, &old).is_empty());
    }
}
