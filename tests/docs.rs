//! The documentation stays true: every relative link and `#anchor` in
//! `README.md`, `ARCHITECTURE.md` and `docs/*.md` resolves; the
//! configuration table of `docs/operations.md` lists exactly the flags and
//! environment variables that `paypush --help` prints; and the README's two
//! set-up commands are `cargo run --release` and the test command `.ci/run`
//! runs.
//!
//! Anchors follow GitHub's rules for headings: the heading's text without
//! its inline-code backticks, in lower case, with every character that is
//! not a letter, a digit, a space, `-` or `_` dropped and spaces turned into
//! `-`; a repeated heading gets `-1`, `-2`, ... Code blocks and code spans
//! are not read for links or headings.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documentation pages whose links are checked: the README,
/// ARCHITECTURE.md and every `docs/*.md`.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The page's lines outside fenced code blocks, with their line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => lines.push((index + 1, line)),
            _ => {}
        }
    }
    lines
}

/// The line without its code spans (`` `...` ``).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .replace('`', "")
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a page defines: its headings' slugs (repeats numbered) and
/// explicit `id="..."` attributes.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = slug(&line[hashes..]);
            let count = seen.entry(base.clone()).or_insert(0);
            anchors.insert(if *count == 0 {
                base.clone()
            } else {
                format!("{base}-{count}")
            });
            *count += 1;
        }
        let mut rest = line;
        while let Some(start) = rest.find(" id=\"") {
            rest = &rest[start + 5..];
            if let Some(end) = rest.find('"') {
                anchors.insert(rest[..end].to_string());
            }
        }
    }
    anchors
}

/// The targets of a page's inline links and images, `[text](target)`, with
/// their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            // `[text](target "title")`: the target is the first word.
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            targets.push((number, target.trim_matches(['<', '>']).to_string()));
            rest = &rest[end..];
        }
    }
    targets
}

/// What is wrong with one link of `page`, if anything.
fn broken(page: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("an empty link".into());
    }
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().expect("a folder").join(path)
    };
    if !file.exists() {
        return Some(format!("{} does not exist", file.display()));
    }
    let anchor = anchor?;
    if file.extension().is_none_or(|ext| ext != "md") {
        return Some(format!("#{anchor} into a file that is not Markdown"));
    }
    let defined = anchors(&read(&file));
    (!defined.contains(anchor)).then(|| {
        format!(
            "no heading of {} has the anchor #{anchor}",
            file.file_name().expect("a name").to_string_lossy()
        )
    })
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for (line, target) in link_targets(&read(&page)) {
            checked += 1;
            if let Some(problem) = broken(&page, &target) {
                let name = page.strip_prefix(root()).unwrap_or(&page).display();
                problems.push(format!("{name}:{line}: ({target}): {problem}"));
            }
        }
    }
    assert!(checked > 0, "no links found: is the parser broken?");
    assert!(
        problems.is_empty(),
        "links that do not resolve:\n{}",
        problems.join("\n")
    );
}

#[test]
fn anchors_follow_github_slug_rules() {
    assert_eq!(
        slug(" What paypush decides where the contract is silent"),
        "what-paypush-decides-where-the-contract-is-silent"
    );
    assert_eq!(
        slug(" Behind a proxy: HTTP/1.1 or h2c"),
        "behind-a-proxy-http11-or-h2c"
    );
    assert_eq!(
        slug(" `GET /push?payRecordId=<id>`"),
        "get-pushpayrecordidid"
    );
    assert_eq!(slug(" CORS and CSP"), "cors-and-csp");
    let repeated = anchors("# A\n## A\n```\n# not a heading\n```\n## A\n");
    assert_eq!(
        repeated,
        BTreeSet::from(["a".into(), "a-1".into(), "a-2".into()])
    );
}

/// The words of `text` that start with `prefix` and go on with
/// `[A-Za-z0-9_-]`.
fn words_starting(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(prefix) {
        let after = &rest[start..];
        let end = after[prefix.len()..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .map_or(after.len(), |end| end + prefix.len());
        let before = rest[..start].chars().next_back();
        if before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
            words.insert(after[..end].to_string());
        }
        rest = &after[end..];
    }
    words
}

/// Where clap's long help starts an option's description (its option lines
/// start further left).
const HELP_DESCRIPTION_INDENT: usize = 10;

/// The long flags and environment variables `paypush --help` prints
/// (`--help` and `--version` apart).
fn help_settings() -> (BTreeSet<String>, BTreeSet<String>) {
    let output = Command::new(env!("CARGO_BIN_EXE_paypush"))
        .arg("--help")
        .output()
        .expect("run paypush --help");
    assert!(output.status.success(), "paypush --help failed");
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    let mut flags = BTreeSet::new();
    let mut variables = BTreeSet::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        // Option lines are indented less than their descriptions.
        let indent = line.len() - trimmed.len();
        if indent < HELP_DESCRIPTION_INDENT && trimmed.starts_with('-') {
            let flag = words_starting(trimmed, "--").into_iter().next();
            flags.extend(flag);
        }
        if let Some(env) = trimmed.strip_prefix("[env: ") {
            let name = env.split(['=', ']']).next().expect("a name");
            variables.insert(name.to_string());
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    (flags, variables)
}

/// The rows of the first table under `## Configuration` in operations.md.
fn configuration_rows() -> Vec<String> {
    let page = read(&root().join("docs/operations.md"));
    let section = page
        .split_once("\n## Configuration\n")
        .expect("a ## Configuration section in docs/operations.md")
        .1;
    section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // the header and its separator
        .map(str::to_string)
        .collect()
}

#[test]
fn configuration_table_lists_exactly_the_settings_of_help() {
    let (help_flags, help_variables) = help_settings();
    assert!(help_flags.contains("--bind"), "flags not found in --help");
    let mut flags = BTreeSet::new();
    let mut variables = BTreeSet::new();
    for row in configuration_rows() {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(cells.len() >= 2, "a row without two cells: {row}");
        flags.extend(words_starting(cells[0], "--"));
        variables.extend(words_starting(cells[1], "PAYPUSH_"));
    }
    let missing = |of: &BTreeSet<String>, from: &BTreeSet<String>| -> Vec<String> {
        of.difference(from).cloned().collect()
    };
    assert!(
        flags == help_flags && variables == help_variables,
        "docs/operations.md's configuration table differs from paypush --help:\n\
         flags missing from the table: {:?}\nflags not in --help: {:?}\n\
         variables missing from the table: {:?}\nvariables not in --help: {:?}",
        missing(&help_flags, &flags),
        missing(&flags, &help_flags),
        missing(&help_variables, &variables),
        missing(&variables, &help_variables),
    );
}

/// The one-line code blocks of the README's `## Quick start` section.
fn readme_setup_commands() -> Vec<String> {
    let readme = read(&root().join("README.md"));
    let section = readme
        .split_once("\n## Quick start\n")
        .expect("a ## Quick start section in README.md")
        .1;
    let section = section.split("\n## ").next().expect("the section");
    let mut commands = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in section.lines() {
        match block.as_mut() {
            None if line.starts_with("```") => block = Some(Vec::new()),
            Some(lines) if line.starts_with("```") => {
                commands.push(lines.join("\n"));
                block = None;
            }
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    commands
}

/// The last command `.ci/run` runs: the README's test command, unchanged.
fn ci_test_command() -> String {
    read(&root().join(".ci/run"))
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty() && !line.starts_with('#'))
        .expect("a command in .ci/run")
        .to_string()
}

#[test]
fn readme_setup_commands_are_what_ci_runs() {
    let commands = readme_setup_commands();
    assert_eq!(
        commands.len(),
        2,
        "README.md's Quick start should hold exactly two code blocks, the two set-up commands: {commands:?}"
    );
    assert_eq!(
        commands[0], "cargo run --release",
        "README.md's run command"
    );
    let ci = ci_test_command();
    assert_eq!(ci, "scripts/test", ".ci/run's last command");
    assert_eq!(
        commands[1], ci,
        "README.md's test command differs from what .ci/run runs"
    );
}
