//! The modules form layers, and a module reaches only the layers below its own: the model
//! knows no transport, the server no face, the cluster's Redis layer no Broker. This reads
//! every `crate::` path in the sources (comments aside) and names any that points up or
//! sideways.

use crate::common::source_files;

/// Each top-level module of `src/` and its layer, lowest first. `lib.rs` and `main.rs`
/// assemble everything and are above all.
const LAYERS: &[(&str, u32)] = &[
    // The event model and primitives every layer shares.
    ("event", 0),
    ("identity", 0),
    ("queue", 0),
    ("logs", 0),
    ("limits", 0),
    // Idempotency keys and what they name, in the event model's terms.
    ("idempotency", 1),
    ("metrics", 1),
    // Wire types below both the server and the faces, then the server.
    ("http", 1),
    ("server", 2),
    // Where streams are kept: one node's store, or the cluster's Redis.
    ("store", 2),
    ("cluster", 3),
    // The owner of stream state, then the actors that subscribe to it.
    ("broker", 4),
    ("session", 5),
    ("webhook", 5),
    ("dashboard", 6),
    // Configuration parses into the types of the layers below; tokens are checked by it.
    ("config", 7),
    ("auth", 8),
    // The faces.
    ("api", 9),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

#[test]
fn no_module_reaches_a_layer_above_its_own() {
    let mut upward = Vec::new();
    for (relative, text) in source_files() {
        let module = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let own =
            layer(&module).unwrap_or_else(|| panic!("src/{relative}: add `{module}` to LAYERS"));
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for path in line.split("crate::").skip(1) {
                let target: String = path
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if target == module {
                    continue;
                }
                // `crate::{a, b}` would hide its modules from this reading: one path each.
                let theirs = layer(&target).unwrap_or_else(|| {
                    panic!(
                        "src/{relative}:{}: `crate::{target}` names no module of LAYERS \
                         (write one `use crate::module::…` per module)",
                        n + 1
                    )
                });
                if theirs >= own {
                    upward.push(format!("src/{relative}:{}: {module} -> {target}", n + 1));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules reaching up or sideways:\n{}",
        upward.join("\n")
    );
}
