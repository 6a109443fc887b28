//! End-to-end tests of the function model: code and configuration updates,
//! versions, weighted aliases, layers, logs, node inspection.

use std::time::Duration;

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use tonic::Code;

fn py(body: &str) -> Vec<u8> {
    zip_files(&[("app.py", body.as_bytes(), 0o644)])
}

async fn invoke_q(name: &str, qualifier: &str) -> pb::InvokeResponse {
    invoke_at(name, qualifier, "{}").await.unwrap()
}

fn text(r: &pb::InvokeResponse) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.payload)
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn updated_code_and_configuration_are_served_by_a_new_instance() {
    let name = unique("upd");
    create(
        &name,
        "python3.11",
        "app.handler",
        py("import os\ndef handler(e, c):\n    return 'one ' + os.environ.get('GREETING', '')\n"),
        0,
    )
    .await
    .unwrap();
    assert_eq!(text(&invoke_q(&name, "").await), "one hello");
    let first = instances(&name).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].invocations, 1);
    // Between invocations an instance is idle, and frozen (its vCPUs
    // stopped) just after its response.
    assert!(
        ["Idle", "Frozen"].contains(&first[0].state.as_str()),
        "{}",
        first[0].state
    );

    let f = client()
        .await
        .update_function_code(pb::UpdateFunctionCodeRequest {
            function_name: name.clone(),
            zip_file: py("import os\ndef handler(e, c):\n    return 'two ' + os.environ.get('GREETING', '')\n"),
            publish: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.version, "$LATEST");
    assert_eq!(text(&invoke_q(&name, "").await), "two hello");

    let f = client()
        .await
        .update_function_configuration(pb::UpdateFunctionConfigurationRequest {
            function_name: name.clone(),
            environment: Some(pb::Environment {
                variables: [("GREETING".to_string(), "bonjour".to_string())].into(),
            }),
            memory_size: Some(256),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.memory_size, 256);
    assert_eq!(f.handler, "app.handler");
    assert_eq!(text(&invoke_q(&name, "").await), "two bonjour");
    let now = instances(&name).await;
    assert_eq!(now.len(), 1, "old instances are retired");
    assert_ne!(now[0].id, first[0].id);
    assert_eq!(now[0].memory_size, 256);

    // A handler the package does not have is refused, and nothing changes.
    let e = client()
        .await
        .update_function_configuration(pb::UpdateFunctionConfigurationRequest {
            function_name: name.clone(),
            handler: Some("missing.handler".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("missing.py"), "{}", e.message());
    let e = client()
        .await
        .update_function_configuration(pb::UpdateFunctionConfigurationRequest {
            function_name: name.clone(),
            timeout: Some(0),
            ..Default::default()
        })
        .await;
    // 0 means "default" for create; on update it is out of range.
    if let Err(e) = e {
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    assert_eq!(text(&invoke_q(&name, "").await), "two bonjour");
}

#[tokio::test]
async fn versions_are_immutable_and_an_alias_splits_traffic_by_weight() {
    let name = unique("ver");
    create(
        &name,
        "python3.11",
        "app.handler",
        py("def handler(e, c):\n    return 'v1'\n"),
        0,
    )
    .await
    .unwrap();
    let v1 = client()
        .await
        .publish_version(pb::PublishVersionRequest {
            function_name: name.clone(),
            description: "first".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.version, "1");
    assert!(
        v1.function_arn.ends_with(&format!(":{name}:1")),
        "{}",
        v1.function_arn
    );
    client()
        .await
        .update_function_code(pb::UpdateFunctionCodeRequest {
            function_name: name.clone(),
            zip_file: py("def handler(e, c):\n    return 'v2'\n"),
            publish: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let v2 = publish(&name).await;
    assert_eq!(v2.version, "2");
    // Unchanged code and configuration: the existing version comes back.
    let again = publish(&name).await;
    assert_eq!(again.version, "2");
    let versions: Vec<String> = client()
        .await
        .list_versions_by_function(pb::ListVersionsByFunctionRequest {
            function_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec!["$LATEST", "1", "2"]);

    let r = invoke_q(&name, "1").await;
    assert_eq!(
        (text(&r).as_str(), r.executed_version.as_str()),
        ("v1", "1")
    );
    let r = invoke_q(&name, "2").await;
    assert_eq!(
        (text(&r).as_str(), r.executed_version.as_str()),
        ("v2", "2")
    );
    let e = client()
        .await
        .invoke(pb::InvokeRequest {
            function_name: name.clone(),
            qualifier: "9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let alias = client()
        .await
        .create_alias(pb::CreateAliasRequest {
            function_name: name.clone(),
            name: "live".into(),
            function_version: "1".into(),
            description: String::new(),
            routing_config: Some(pb::AliasRoutingConfiguration {
                additional_version_weights: [("2".to_string(), 0.2)].into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(alias.alias_arn.ends_with(&format!(":{name}:live")));
    let mut twos = 0;
    let n = 150;
    for _ in 0..n {
        let r = invoke_q(&name, "live").await;
        match r.executed_version.as_str() {
            "2" => {
                assert_eq!(text(&r), "v2");
                twos += 1;
            }
            "1" => assert_eq!(text(&r), "v1"),
            other => panic!("executed {other}"),
        }
    }
    // 20% of 150 is 30; the binomial standard deviation is about 4.9.
    assert!((12..=50).contains(&twos), "version 2 served {twos} of {n}");

    // Moving the alias takes effect at once; a duplicate alias conflicts.
    client()
        .await
        .update_alias(pb::UpdateAliasRequest {
            function_name: name.clone(),
            name: "live".into(),
            function_version: Some("2".into()),
            description: None,
            routing_config: Some(pb::AliasRoutingConfiguration::default()),
        })
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(invoke_q(&name, "live").await.executed_version, "2");
    }
    let e = client()
        .await
        .create_alias(pb::CreateAliasRequest {
            function_name: name.clone(),
            name: "live".into(),
            function_version: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(
        e.message().starts_with("ResourceConflictException"),
        "{}",
        e.message()
    );
    let e = client()
        .await
        .create_alias(pb::CreateAliasRequest {
            function_name: name.clone(),
            name: "bad".into(),
            function_version: "1".into(),
            routing_config: Some(pb::AliasRoutingConfiguration {
                additional_version_weights: [("2".to_string(), 1.5)].into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("RoutingConfig"), "{}", e.message());
}

#[tokio::test]
async fn a_python_layer_is_importable_and_survives_its_deletion() {
    let layer = unique("deps");
    let l = client()
        .await
        .publish_layer_version(pb::PublishLayerVersionRequest {
            layer_name: layer.clone(),
            zip_file: zip_files(&[
                ("python/greeting.py", b"WORD = 'from layer one'\n", 0o644),
                ("bin/layer-tool", b"#!/bin/sh\necho tool\n", 0o755),
            ]),
            description: "greeting".into(),
            compatible_runtimes: vec!["python3.11".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.version, 1);
    let l2 = client()
        .await
        .publish_layer_version(pb::PublishLayerVersionRequest {
            layer_name: layer.clone(),
            zip_file: zip_files(&[("python/greeting.py", b"WORD = 'from layer two'\n", 0o644)]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l2.version, 2);
    let other = unique("more");
    let l3 = client()
        .await
        .publish_layer_version(pb::PublishLayerVersionRequest {
            layer_name: other.clone(),
            zip_file: zip_files(&[("python/extra.py", b"X = 42\n", 0o644)]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let name = unique("layered");
    let code = py(
        "import os, shutil, greeting, extra\ndef handler(e, c):\n    return {'word': greeting.WORD, 'x': extra.X, 'tool': shutil.which('layer-tool'), 'ld': os.environ['LD_LIBRARY_PATH']}\n",
    );
    client()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: name.clone(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: code,
            // Later layers win: version 2 of the greeting overrides version 1.
            layers: vec![
                l.layer_version_arn.clone(),
                l2.layer_version_arn.clone(),
                l3.layer_version_arn.clone(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let r = invoke(&name, "{}").await.unwrap();
    assert_eq!(
        r.function_error,
        "",
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    let v = json(&r);
    assert_eq!(v["word"], "from layer two");
    assert_eq!(v["x"], 42);
    assert_eq!(v["tool"], "/opt/bin/layer-tool");
    assert!(v["ld"].as_str().unwrap().contains("/opt/lib"));

    // Deleting a layer version in use does not break the function, even on
    // a fresh instance.
    for ver in [1, 2] {
        client()
            .await
            .delete_layer_version(pb::DeleteLayerVersionRequest {
                layer_name: layer.clone(),
                version: ver,
            })
            .await
            .unwrap();
    }
    let e = client()
        .await
        .get_layer_version(pb::GetLayerVersionRequest {
            layer_name: layer.clone(),
            version: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    node_client()
        .await
        .stop_instances(pb::StopInstancesRequest {
            function_name: name.clone(),
            instance_id: String::new(),
        })
        .await
        .unwrap();
    let r = invoke(&name, "{}").await.unwrap();
    assert_eq!(json(&r)["word"], "from layer two");

    // A function can no longer be created with the deleted version.
    let e = client()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: unique("late"),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: py("def handler(e, c):\n    return 1\n"),
            layers: vec![l.layer_version_arn.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Six layers are too many.
    let e = client()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: unique("many"),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: py("def handler(e, c):\n    return 1\n"),
            layers: vec![l3.layer_version_arn.clone(); 6],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("Layers"), "{}", e.message());
}

#[tokio::test]
async fn logs_are_followed_live_while_invoking() {
    let name = unique("logs");
    create(
        &name,
        "python3.11",
        "app.handler",
        py("def handler(e, c):\n    print('marker', e['n'])\n    return 1\n"),
        0,
    )
    .await
    .unwrap();
    invoke(&name, r#"{"n": 1}"#).await.unwrap();
    let mut stream = node_client()
        .await
        .tail_logs(pb::TailLogsRequest {
            function_name: name.clone(),
            since_seconds: 600,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let name2 = name.clone();
    let mut invoker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        invoke(&name2, r#"{"n": 2}"#).await.unwrap().request_id
    });
    let mut seen: Vec<pb::LogLine> = Vec::new();
    // The invocation takes what it takes on this machine; its lines are
    // written before it answers, so once it has, they must follow soon.
    let mut answered: Option<String> = None;
    let mut follow_by = tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        tokio::select! {
            r = &mut invoker, if answered.is_none() => {
                answered = Some(r.expect("the second invocation"));
                follow_by = tokio::time::Instant::now() + Duration::from_secs(30);
            }
            line = stream.message() => {
                let line = line.unwrap().expect("stream open");
                let done = line.message.starts_with("REPORT")
                    && seen
                        .iter()
                        .any(|m| m.message == "marker 2" && m.request_id == line.request_id);
                seen.push(line);
                if done {
                    break;
                }
            }
            _ = tokio::time::sleep_until(follow_by) => {
                panic!("the invocation answered 30 s ago and its lines did not follow: {seen:?}");
            }
        }
    }
    let rid = match answered {
        Some(rid) => rid,
        None => invoker.await.unwrap(),
    };
    assert!(
        seen.iter().any(|l| l.message == "marker 1"),
        "backlog has the first invocation"
    );
    let live: Vec<_> = seen
        .iter()
        .filter(|l| l.request_id == rid)
        .map(|l| l.message.as_str())
        .collect();
    assert!(live[0].starts_with("START RequestId: "), "{live:?}");
    assert!(live.contains(&"marker 2"), "{live:?}");
    assert!(
        live.iter().any(|m| m.starts_with("END RequestId: ")),
        "{live:?}"
    );
    assert!(seen
        .iter()
        .all(|l| !l.timestamp.is_empty() && !l.log_stream.is_empty()));
}

#[tokio::test]
async fn node_info_and_instances_describe_the_node() {
    let name = unique("inspect");
    create(
        &name,
        "python3.11",
        "app.handler",
        py("def handler(e, c):\n    return 1\n"),
        0,
    )
    .await
    .unwrap();
    invoke(&name, "{}").await.unwrap();
    let info = node_client()
        .await
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.engine.contains("QEMU"), "{}", info.engine);
    assert!(!info.accelerator.is_empty() && !info.accelerator_reason.is_empty());
    assert!(info.kernel.ends_with("vmlinux"));
    assert_eq!(
        info.runtime_images.len(),
        flint_daemon::packages::Runtime::ALL.len()
    );
    assert!(info.runtime_images.iter().all(|r| r.size > 0));
    assert!(info.cpus > 0 && info.memory_total_mb > 0);
    assert!(info.instances >= 1);
    let list = instances(&name).await;
    assert_eq!(list.len(), 1);
    let i = &list[0];
    assert_eq!(
        (i.function_version.as_str(), i.start_kind.as_str()),
        ("$LATEST", "runtime-snapshot")
    );
    assert!(i.rss_kb > 0);
    assert!(!i.last_used.is_empty());
    let stopped = node_client()
        .await
        .stop_instances(pb::StopInstancesRequest {
            instance_id: i.id.clone(),
            function_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .stopped;
    assert_eq!(stopped, vec![i.id.clone()]);
    let list = instances(&name).await;
    assert!(list.is_empty());
    let e = node_client()
        .await
        .stop_instances(pb::StopInstancesRequest {
            instance_id: "nope".into(),
            function_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn flintctl_covers_versions_aliases_layers_logs_and_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(bin("flintctl"))
            .env("FLINT_ENDPOINT", &node().endpoint)
            .args(args)
            .output()
            .expect("run flintctl");
        assert!(
            out.status.success(),
            "flintctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let jctl = |args: &[&str]| -> serde_json::Value { serde_json::from_str(&ctl(args)).unwrap() };
    let write = |name: &str, data: Vec<u8>| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        format!("fileb://{}", p.display())
    };
    let layer_zip = write(
        "layer.zip",
        zip_files(&[("python/word.py", b"W = 'layered'\n", 0o644)]),
    );
    let v1 = write(
        "v1.zip",
        py("import word\ndef handler(e, c):\n    return word.W + ' v1'\n"),
    );
    let v2 = write(
        "v2.zip",
        py("import word\ndef handler(e, c):\n    return word.W + ' v2'\n"),
    );
    let name = unique("ctl-model");
    let layer = unique("ctl-layer");

    let l = jctl(&[
        "publish-layer-version",
        "--layer-name",
        &layer,
        "--zip-file",
        &layer_zip,
        "--compatible-runtimes",
        "python3.11",
    ]);
    let arn = l["LayerVersionArn"].as_str().unwrap().to_string();
    assert_eq!(l["Version"], 1);
    jctl(&[
        "create-function",
        "--function-name",
        &name,
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--zip-file",
        &v1,
        "--layers",
        &arn,
    ]);
    assert_eq!(
        jctl(&["publish-version", "--function-name", &name])["Version"],
        "1"
    );
    let up = jctl(&[
        "update-function-code",
        "--function-name",
        &name,
        "--zip-file",
        &v2,
        "--publish",
    ]);
    assert_eq!(up["Version"], "2");
    let vs = jctl(&["list-versions-by-function", "--function-name", &name]);
    assert_eq!(vs["Versions"].as_array().unwrap().len(), 3);
    let a = jctl(&[
        "create-alias",
        "--function-name",
        &name,
        "--name",
        "live",
        "--function-version",
        "1",
        "--routing-config",
        "AdditionalVersionWeights={2=0.5}",
    ]);
    assert_eq!(a["RoutingConfig"]["AdditionalVersionWeights"]["2"], 0.5);
    assert_eq!(
        jctl(&["list-aliases", "--function-name", &name])["Aliases"][0]["Name"],
        "live"
    );
    assert_eq!(
        jctl(&["list-layers"])["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["LayerName"] == layer.as_str())
            .count(),
        1
    );

    let out = dir.path().join("out.json");
    let out_s = out.display().to_string();
    let r = jctl(&[
        "invoke",
        "--function-name",
        &name,
        "--qualifier",
        "1",
        "--payload",
        "{}",
        &out_s,
    ]);
    assert_eq!(r["ExecutedVersion"], "1");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "\"layered v1\"");
    let r = jctl(&[
        "invoke",
        "--function-name",
        &name,
        "--qualifier",
        "2",
        "--payload",
        "{}",
        &out_s,
    ]);
    assert_eq!(r["ExecutedVersion"], "2");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "\"layered v2\"");

    // Operators' commands print tables by default, JSON on request.
    let table = ctl(&["instances", "--function-name", &name]);
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    let info = ctl(&["node", "info"]);
    assert!(info.contains("accelerator"), "{info}");
    assert!(
        info.contains("in flight") && info.contains("slots"),
        "{info}"
    );
    let info = jctl(&["node", "info", "--output", "json"]);
    assert!(info["Engine"].as_str().unwrap().contains("QEMU"));
    assert!(info["StartSlots"].as_u64().unwrap() >= 1, "{info}");
    assert_eq!(info["ScalingRate"]["Instances"], 1000, "{info}");
    let logs = ctl(&["logs", "tail", &name, "--since", "10m"]);
    assert!(logs.contains("REPORT RequestId: "), "{logs}");
    let stopped = jctl(&[
        "instances",
        "stop",
        "--function-name",
        &name,
        "--output",
        "json",
    ]);
    assert_eq!(stopped["Stopped"].as_array().unwrap().len(), 2);
    ctl(&["delete-alias", "--function-name", &name, "--name", "live"]);
    ctl(&["delete-function", "--function-name", &name]);
    ctl(&[
        "delete-layer-version",
        "--layer-name",
        &layer,
        "--version-number",
        "1",
    ]);
}
