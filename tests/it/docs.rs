//! The project's own documentation (README.md and `docs/`) against the running server's
//! `/openapi.json`, so that the two cannot drift: every operation has its heading in `docs/`,
//! every endpoint a page names is served, every relative link and anchor resolves, the names
//! the document's schemas use appear in the pages, every flag of `herald serve` is in the
//! configuration table, and nothing points at files users do not have.
//!
//! The convention the pages follow (and `docs/README.md` states): each endpoint has a heading,
//! or the first cell of an endpoint table's row, whose inline code is `METHOD /path/{parameter}`,
//! the template spelled exactly as `/openapi.json` spells it. Anywhere else, inline code that
//! starts with a method and a path names an endpoint too, and must match a template (with
//! concrete segments for parameters).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use awc::http::StatusCode;
use serde_json::Value;

use crate::common::*;

const METHODS: [&str; 8] = [
    "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
];

/// Enumerations longer than this are reference tables (countries, currencies), named in the
/// pages by their standard rather than value by value.
const LONGEST_ENUM: usize = 32;

/// Strings that point into the team's working files, which users do not have.
const PRIVATE: [&str; 3] = ["../shared", "shared/", "API.md"];

/// One Markdown file: its path below the repository root and its text.
struct Page {
    path: PathBuf,
    text: String,
}

/// README.md and every `.md` file of `docs/`.
fn pages() -> Vec<Page> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("a docs/ directory")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| path.strip_prefix(root).unwrap().to_path_buf())
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|path| Page {
            text: std::fs::read_to_string(root.join(&path)).unwrap(),
            path,
        })
        .collect()
}

/// The page's prose: its paragraphs (blocks between blank lines) outside fenced code blocks,
/// each with the line number it starts on. Inline code and links never span blocks, so this
/// is the unit they are read in.
fn blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut fence: Option<&str> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
            blocks.extend(current.take());
            continue;
        }
        if trimmed.is_empty() {
            blocks.extend(current.take());
            continue;
        }
        // A heading is a block of its own, even without blank lines around it.
        if trimmed.starts_with('#') {
            blocks.extend(current.take());
            blocks.push((n + 1, line.to_string()));
            continue;
        }
        match &mut current {
            Some((_, block)) => {
                block.push('\n');
                block.push_str(line);
            }
            None => current = Some((n + 1, line.to_string())),
        }
    }
    blocks.extend(current);
    blocks
}

/// The inline code spans of a block, and the block with each span blanked out (so that what
/// looks like a link inside code is not taken for one). A span opens with a run of backticks
/// and closes with the next run of the same length, as in CommonMark.
fn code_spans(block: &str) -> (Vec<String>, String) {
    let chars: Vec<char> = block.chars().collect();
    let mut spans = Vec::new();
    let mut rest = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            rest.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let start = i + run;
        let mut j = start;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let other = chars[j..].iter().take_while(|&&c| c == '`').count();
                if other == run {
                    close = Some(j);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                let span: String = chars[start..end].iter().collect();
                let span = span.replace('\n', " ");
                let span = match span.strip_prefix(' ').and_then(|s| s.strip_suffix(' ')) {
                    Some(inner) if !inner.trim().is_empty() => inner.to_string(),
                    _ => span,
                };
                spans.push(span);
                rest.push_str(&" ".repeat(end + run - i));
                i = end + run;
            }
            None => {
                // No closing run: the backticks are literal.
                rest.extend(std::iter::repeat_n('`', run));
                i = start;
            }
        }
    }
    (spans, rest)
}

/// An endpoint named by inline code: `GET /path` (a query after `?` is not part of it).
fn endpoint(span: &str) -> Option<(String, String)> {
    let (method, rest) = span.split_once(' ')?;
    if !METHODS.contains(&method) || !rest.starts_with('/') {
        return None;
    }
    let path = rest.split([' ', '?']).next().unwrap();
    Some((method.to_string(), path.to_string()))
}

/// Whether a path a page names is an instance of an OpenAPI template: the same segments,
/// where a `{parameter}` segment stands for any non-empty one.
fn instance_of(path: &str, template: &str) -> bool {
    let path: Vec<&str> = path.split('/').collect();
    let template: Vec<&str> = template.split('/').collect();
    path.len() == template.len()
        && path
            .iter()
            .zip(&template)
            .all(|(p, t)| p == t || (t.starts_with('{') && t.ends_with('}') && !p.is_empty()))
}

/// A heading's anchor as GitHub makes it: lower case, letters, digits, `-` and `_` kept,
/// spaces made `-`, everything else dropped; repeats get `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, block) in blocks(text) {
        let Some(heading) = block.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#').trim();
        let slug: String = heading
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    anchors
}

/// The targets of the inline links `[text](target)` of a block whose code is blanked out.
fn links(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = prose;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else {
            break;
        };
        // `[text](target "title")`: the target is the first word.
        let target = after[..end].split_whitespace().next().unwrap_or_default();
        targets.push(target.to_string());
        rest = &after[end..];
    }
    targets
}

/// `a/b/../c` as `a/c`, so that a link's file can be looked up and named plainly.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

async fn openapi(srv: &TestServer) -> (Value, String) {
    let mut res = client().get(srv.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8(res.body().limit(4 << 20).await.unwrap().to_vec()).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

/// Every (METHOD, path template) of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method.to_lowercase()).is_some() {
                ops.insert((method.to_string(), path.clone()));
            }
        }
    }
    ops
}

/// Every operation of `/openapi.json` has a heading (or table row) in `docs/`, and every
/// endpoint a page names (there or anywhere else in its prose) is one the server serves.
#[actix_rt::test]
async fn every_operation_is_documented_and_every_documented_endpoint_is_served() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let (doc, _) = openapi(&srv).await;
    let served = operations(&doc);

    let mut headed = BTreeSet::new();
    let mut unserved = Vec::new();
    for page in pages() {
        for (line, block) in blocks(&page.text) {
            // What documents an endpoint: a heading, or the first cell of a table row.
            let defining: Vec<String> = if block.starts_with('#') {
                code_spans(&block).0
            } else {
                block
                    .lines()
                    .filter_map(|row| row.trim().strip_prefix('|')?.split('|').next())
                    .flat_map(|cell| code_spans(cell).0)
                    .collect()
            };
            for span in code_spans(&block).0 {
                let Some((method, path)) = endpoint(&span) else {
                    continue;
                };
                let at = format!("{}:{line}: `{span}`", page.path.display());
                if defining.contains(&span) {
                    // This documents the operation, so it spells the template exactly.
                    if page.path.starts_with("docs") {
                        headed.insert((method.clone(), path.clone()));
                    }
                    if !served.contains(&(method, path)) {
                        unserved.push(format!("{at} (a heading or table must spell the template)"));
                    }
                } else if !served
                    .iter()
                    .any(|(m, template)| *m == method && instance_of(&path, template))
                {
                    unserved.push(at);
                }
            }
        }
    }
    assert!(
        unserved.is_empty(),
        "endpoints the pages name that /openapi.json does not have:\n{}",
        unserved.join("\n")
    );
    let undocumented: Vec<String> = served
        .difference(&headed)
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "operations of /openapi.json without a `METHOD /path` heading or table row in docs/:\n{}",
        undocumented.join("\n")
    );
}

/// The names `/openapi.json` gives things (every property of every schema, every enumerated
/// value, every instance-face error code) appear in the pages, as whole words.
#[actix_rt::test]
async fn the_documents_names_appear_in_the_pages() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let (doc, _) = openapi(&srv).await;
    let text: String = pages().iter().map(|p| p.text.as_str()).collect();

    let mut names = BTreeSet::new();
    collect_names(&doc, &mut names);
    let missing: Vec<&String> = names.iter().filter(|n| !has_word(&text, n)).collect();
    assert!(
        missing.is_empty(),
        "names of /openapi.json that no page mentions: {missing:?}"
    );
}

/// Property names, enumerated strings and the codes of "- `code` - ..." lines in descriptions.
fn collect_names(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("properties", Value::Object(properties)) => {
                        names.extend(properties.keys().cloned());
                    }
                    // Not the ISO 3166 and 4217 tables: the pages name them by their standard.
                    ("enum", Value::Array(values)) if values.len() <= LONGEST_ENUM => {
                        names.extend(values.iter().filter_map(Value::as_str).map(String::from));
                    }
                    ("description", Value::String(text)) => {
                        for line in text.lines() {
                            let code = line
                                .trim_start()
                                .strip_prefix("- `")
                                .and_then(|rest| rest.split_once("` - "));
                            if let Some((code, _)) = code {
                                names.insert(code.to_string());
                            }
                        }
                    }
                    _ => {}
                }
                collect_names(value, names);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_names(item, names)),
        _ => {}
    }
}

/// Whether `word` occurs in `text` with no letter, digit or `_` right before or after it.
fn has_word(text: &str, word: &str) -> bool {
    let part = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        !part(text[..at].chars().next_back()) && !part(text[at + word.len()..].chars().next())
    })
}

/// Every relative link of README.md and `docs/` names a file of the repository, and its
/// `#anchor`, if any, a heading of that file.
#[test]
fn every_relative_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pages = pages();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let dir = page.path.parent().unwrap_or(Path::new(""));
        for (line, block) in blocks(&page.text) {
            for target in links(&code_spans(&block).1) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let at = format!("{}:{line}: ({target})", page.path.display());
                let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
                let file = if file.is_empty() {
                    page.path.clone()
                } else {
                    normalize(&dir.join(file))
                };
                if !root.join(&file).exists() {
                    broken.push(format!("{at}: no file {}", file.display()));
                    continue;
                }
                if anchor.is_empty() {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(root.join(&file)) else {
                    broken.push(format!("{at}: an anchor into a directory"));
                    continue;
                };
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{at}: no heading #{anchor} in {}", file.display()));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the scan broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Nothing users read points at the team's working files: not the pages, not `/openapi.json`.
#[actix_rt::test]
async fn nothing_points_at_files_users_do_not_have() {
    let mut found = Vec::new();
    for page in pages() {
        for (n, line) in page.text.lines().enumerate() {
            for private in PRIVATE {
                if line.contains(private) {
                    found.push(format!("{}:{}: {private}", page.path.display(), n + 1));
                }
            }
        }
    }
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let (_, text) = openapi(&srv).await;
    for private in PRIVATE {
        if text.contains(private) {
            found.push(format!("/openapi.json: {private}"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Every flag of `herald serve` has its row in the configuration table, with its variable and
/// its key in the configuration file.
#[test]
fn every_flag_is_in_the_configuration_table() {
    use clap::Args;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let command = herald::config::ServeArgs::augment_args(clap::Command::new("serve"));
    let mut missing = Vec::new();
    let mut flags = 0;
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        flags += 1;
        let row = table
            .lines()
            .find(|line| line.starts_with(&format!("| `--{long}` |")));
        let Some(row) = row else {
            missing.push(format!("--{long}: no row"));
            continue;
        };
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            if !row.contains(&format!("`{env}`")) {
                missing.push(format!("--{long}: the row does not name {env}"));
            }
        }
        let key = herald::config::file::KEYS
            .iter()
            .find(|k| k.id == arg.get_id());
        if let Some(key) = key {
            if !row.contains(&format!("| `{}` |", key.path)) {
                missing.push(format!("--{long}: the row does not name {}", key.path));
            }
        }
    }
    assert!(flags > 20, "only {flags} flags found");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The scanners above, on small inputs: what they miss, a drifted page would get past them.
#[test]
fn the_scanners_read_markdown_as_github_does() {
    let text = "# Title\n\n## `GET /a/{id}`\n\nSee [b](b.md#x-y) and `[no](link)`,\n\
        ``a ` tick`` and `POST /b?x=1`.\n\n```sh\ncurl -X POST /c\n[in](code)\n```\n\n## Title\n";
    let blocks = blocks(text);
    assert_eq!(blocks.len(), 4, "{blocks:?}");
    let (spans, prose) = code_spans(&blocks[2].1);
    assert_eq!(spans, ["[no](link)", "a ` tick", "POST /b?x=1"]);
    assert_eq!(links(&prose), ["b.md#x-y"]);
    assert_eq!(endpoint(&spans[2]), Some(("POST".into(), "/b".into())));
    assert_eq!(endpoint("GET …/notification"), None);
    assert!(instance_of(
        "/revocations/sub/alice",
        "/revocations/{kind}/{id}"
    ));
    assert!(!instance_of("/revocations/sub", "/revocations/{kind}/{id}"));
    let anchors = anchors(text);
    assert!(
        anchors.contains("get-aid") && anchors.contains("title-1"),
        "{anchors:?}"
    );
    assert!(has_word("a `status` b", "status") && !has_word("statuses", "status"));
}
