//! Every blueprint, in every runtime it offers, is written by `flintctl
//! init`, deployed by `flintctl deploy` to a real flintd (with a broker, for
//! the queues and streams blueprints read) and invoked with its own sample
//! event by `flintctl invoke`; its answer must contain what the blueprint
//! says it returns, and what it is wired to (a mapping, a schedule,
//! destinations) must exist. `create-function --blueprint` does the same in
//! one command. One flintd serves the whole file, in one test.

use flint_e2e::*;
use serde_json::Value;

/// `blueprint.json` of every blueprint in the checkout: what `init --list`
/// must show, and the answers to check.
fn blueprints_in_tree() -> Vec<(String, Value)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/blueprints");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = std::fs::read(e.path().join("blueprint.json")).unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                serde_json::from_slice(&meta).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `want` is contained in `got`: every key of an object with a contained
/// value, anything else equal.
fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| contains(gv, v))),
        _ => got == want,
    }
}

/// The endpoint of this file's flintd.
static EP: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn ep() -> &'static str {
    EP.get().expect("flintd started")
}

fn ctl(args: &[&str]) -> String {
    flintctl(ep(), args).unwrap_or_else(|e| panic!("flintctl {args:?}: {e}"))
}

/// Invokes `name` (at `qualifier`) with the event in `event`, through
/// flintctl; the answer.
fn invoke_with(
    name: &str,
    qualifier: &str,
    event: &std::path::Path,
    out: &std::path::Path,
) -> Value {
    let payload = format!("file://{}", event.display());
    let mut args = vec!["invoke", "--function-name", name, "--payload", &payload];
    if !qualifier.is_empty() {
        args.extend(["--qualifier", qualifier]);
    }
    let outfile = out.display().to_string();
    args.push(&outfile);
    let status: Value = serde_json::from_str(&ctl(&args)).unwrap();
    let answer = std::fs::read(out).unwrap();
    assert!(
        status.get("FunctionError").is_none(),
        "{name}: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    serde_json::from_slice(&answer)
        .unwrap_or_else(|_| panic!("{name}: not JSON: {}", String::from_utf8_lossy(&answer)))
}

#[tokio::test]
async fn blueprints_are_generated_deployed_wired_and_answer_their_sample_events() {
    // The Rust blueprint is built by `flintctl deploy` (cargo, as the user):
    // into a cached target folder, so that a second run builds nothing.
    let cache = std::env::var("FLINT_CACHE").unwrap_or_else(|_| "/var/cache/flint".into());
    std::env::set_var(
        "CARGO_TARGET_DIR",
        format!("{cache}/fixtures/blueprint-rust"),
    );
    std::env::remove_var("RUSTFLAGS");
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let flintd = spawn_flintd(dir.path(), &redis.url(), 0xd_0000);
    EP.set(flintd.endpoint.clone()).unwrap();
    every_blueprint_answers_its_sample_event();
    a_project_can_be_changed_and_deployed_again();
    create_function_from_a_blueprint_in_one_command();
    drop(flintd);
    drop(redis);
}

fn every_blueprint_answers_its_sample_event() {
    let tree = blueprints_in_tree();
    let listed: Value = serde_json::from_str(&ctl(&["init", "--list"])).unwrap();
    let names: Vec<&str> = listed["Blueprints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        tree.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        "init --list shows every blueprint of the tree"
    );
    let table = flintctl(ep(), &["init", "--list", "--output", "table"]).unwrap();
    assert!(table.contains("hello-world"), "{table}");

    let dir = tempfile::tempdir().unwrap();
    let mut deployed = 0;
    for (blueprint, meta) in &tree {
        for runtime in meta["runtimes"].as_object().unwrap().keys() {
            let project = dir.path().join(format!("{blueprint}-{runtime}"));
            let project_arg = project.display().to_string();
            ctl(&[
                "init",
                "--blueprint",
                blueprint,
                "--runtime",
                runtime,
                &project_arg,
            ]);
            for f in ["flint.json", "event.json", "README.md", "src"] {
                assert!(project.join(f).exists(), "{blueprint} {runtime}: no {f}");
            }
            let name = unique(&format!("bp-{blueprint}-{}", runtime.replace('.', "")));
            let f: Value =
                serde_json::from_str(&ctl(&["deploy", "--function-name", &name, &project_arg]))
                    .unwrap();
            assert_eq!(f["Runtime"], runtime.as_str(), "{f}");
            assert_eq!(f["MemorySize"], meta["memory_size"], "{f}");
            assert_eq!(f["Timeout"], meta["timeout"], "{f}");
            let publish = meta["publish"].as_bool().unwrap_or(false);
            let qualifier = if publish { "1" } else { "" };
            if publish {
                assert_eq!(f["Version"], "1", "{f}");
            }
            let answer = invoke_with(
                &name,
                qualifier,
                &project.join("event.json"),
                &dir.path().join("answer.json"),
            );
            assert!(
                contains(&answer, &meta["expect"]),
                "{blueprint} {runtime}: {answer} does not contain {}",
                meta["expect"]
            );
            check_wiring(&name, meta);
            deployed += 1;
        }
    }
    assert!(deployed >= 17, "{deployed}");
}

/// What `meta` says the function is wired to exists.
fn check_wiring(name: &str, meta: &Value) {
    let mappings = || -> Vec<Value> {
        let l: Value = serde_json::from_str(&ctl(&[
            "list-event-source-mappings",
            "--function-name",
            name,
        ]))
        .unwrap();
        l["EventSourceMappings"].as_array().unwrap().clone()
    };
    if let Some(q) = meta.get("queue") {
        let m = mappings();
        assert_eq!(m.len(), 1, "{name}: {m:?}");
        let arn = m[0]["EventSourceArn"].as_str().unwrap();
        assert!(arn.ends_with(&format!(":{name}-queue")), "{m:?}");
        assert_eq!(m[0]["BatchSize"], q["batch_size"], "{m:?}");
        assert_eq!(
            m[0]["FunctionResponseTypes"],
            serde_json::json!(["ReportBatchItemFailures"]),
            "{m:?}"
        );
    }
    if let Some(s) = meta.get("stream") {
        let m = mappings();
        assert_eq!(m.len(), 1, "{name}: {m:?}");
        let arn = m[0]["EventSourceArn"].as_str().unwrap();
        assert!(arn.ends_with(&format!("stream/{name}-stream")), "{m:?}");
        assert_eq!(m[0]["StartingPosition"], s["starting_position"], "{m:?}");
    }
    if let Some(s) = meta.get("schedule") {
        let got: Value = serde_json::from_str(&ctl(&[
            "get-schedule",
            "--name",
            &format!("{name}-schedule"),
        ]))
        .unwrap();
        assert_eq!(got["ScheduleExpression"], s["expression"], "{got}");
    }
    if let Some(d) = meta.get("destinations") {
        let got: Value = serde_json::from_str(&ctl(&[
            "get-function-event-invoke-config",
            "--function-name",
            name,
        ]))
        .unwrap();
        let on_success = got["DestinationConfig"]["OnSuccess"]["Destination"]
            .as_str()
            .unwrap_or_default();
        let want = format!("event-bus/{name}-{}", d["on_success"].as_str().unwrap());
        assert!(on_success.ends_with(&want), "{got}");
        assert_eq!(
            got["MaximumRetryAttempts"], d["maximum_retry_attempts"],
            "{got}"
        );
    }
}

fn a_project_can_be_changed_and_deployed_again() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("hello");
    let project_arg = project.display().to_string();
    ctl(&[
        "init",
        "--blueprint",
        "hello-world",
        "--runtime",
        "nodejs18.x",
        &project_arg,
    ]);
    // The folder must be new or empty: nothing is overwritten.
    let again = flintctl(
        ep(),
        &[
            "init",
            "--blueprint",
            "hello-world",
            "--runtime",
            "nodejs18.x",
            &project_arg,
        ],
    )
    .unwrap_err();
    assert!(again.contains("not empty"), "{again}");
    let name = unique("bp-change");
    ctl(&["deploy", "--function-name", &name, &project_arg]);
    let event = project.join("event.json");
    let out = dir.path().join("out.json");
    assert_eq!(
        invoke_with(&name, "", &event, &out)["message"],
        "Hello, Flint!"
    );

    // A changed preset and changed code reach the function on the next
    // deploy.
    let flint_json = project.join("flint.json");
    let mut p: Value = serde_json::from_slice(&std::fs::read(&flint_json).unwrap()).unwrap();
    p["environment"]["GREETING"] = "Howdy".into();
    p["memory_size"] = 256.into();
    std::fs::write(&flint_json, serde_json::to_vec_pretty(&p).unwrap()).unwrap();
    let code = project.join("src/index.js");
    let js = std::fs::read_to_string(&code).unwrap();
    std::fs::write(
        &code,
        js.replace("${greeting}, ${name}!", "${greeting}, ${name}!!"),
    )
    .unwrap();
    let f: Value =
        serde_json::from_str(&ctl(&["deploy", "--function-name", &name, &project_arg])).unwrap();
    assert_eq!(f["MemorySize"], 256);
    assert_eq!(
        invoke_with(&name, "", &event, &out)["message"],
        "Howdy, Flint!!"
    );

    // A link in the code is refused, not followed.
    std::os::unix::fs::symlink("/etc/shadow", project.join("src/secret")).unwrap();
    let e = flintctl(ep(), &["deploy", "--function-name", &name, &project_arg]).unwrap_err();
    assert!(e.contains("only plain files"), "{e}");
}

fn create_function_from_a_blueprint_in_one_command() {
    let name = unique("bp-oneshot");
    let f: Value = serde_json::from_str(&ctl(&[
        "create-function",
        "--function-name",
        &name,
        "--blueprint",
        "layer-deps",
        "--runtime",
        "python3.11",
        "--timeout",
        "7",
    ]))
    .unwrap();
    assert_eq!(f["Timeout"], 7);
    assert_eq!(f["Layers"].as_array().map(|l| l.len()), Some(1), "{f}");
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(&event, br#"{"text": "one command"}"#).unwrap();
    let answer = invoke_with(&name, "", &event, &dir.path().join("out.json"));
    assert_eq!(answer["words"], 2);
    assert_eq!(answer["from"], "/opt");
    // A blueprint that does not exist, or a runtime it does not offer, is
    // a usage error that names what there is.
    let e = flintctl(
        ep(),
        &[
            "create-function",
            "--function-name",
            "x",
            "--blueprint",
            "nope",
        ],
    )
    .unwrap_err();
    assert!(e.contains("no blueprint named"), "{e}");
    let e = flintctl(
        ep(),
        &[
            "create-function",
            "--function-name",
            "x",
            "--blueprint",
            "snapstart",
            "--runtime",
            "nodejs18.x",
        ],
    )
    .unwrap_err();
    assert!(e.contains("offered for python3.11"), "{e}");
}
