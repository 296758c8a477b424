//! Istio's real charts (1.30 and 1.31) through meshfed's renderer: one helm
//! run serves every member whose values differ only in cluster name and
//! network, and what each member gets is exactly what rendering its own
//! values would give; concurrent renders of one values set share a run.
use anyhow::Result;
use meshfed::api::{Member, MemberCredentials, MeshFederationSpec};
use meshfed::charts::{CLUSTER_PLACEHOLDER, Chart, ChartRenderer, NETWORK_PLACEHOLDER};
use meshfed::render::control_plane::{east_west_gateway_values, istiod_values, with_revision};

fn member(name: &str, network: &str) -> Member {
    Member {
        name: name.into(),
        network: network.into(),
        credentials: MemberCredentials {
            secret_ref: None,
            local: Some(Default::default()),
        },
        api_server: None,
        control_plane_values: None,
        east_west_gateway: None,
    }
}

fn spec() -> MeshFederationSpec {
    serde_json::from_value(serde_json::json!({
        "meshID": "mesh1",
        "members": [],
        "controlPlane": {"mode": "Managed", "version": "1.31"},
    }))
    .unwrap()
}

#[tokio::test]
async fn one_render_serves_every_member_exactly() -> Result<()> {
    let dir = tempdir();
    let charts = e2e::istiod::charts_dir(&dir, &["1.30", "1.31"]).await?;
    let renderer = ChartRenderer::new(e2e::istiod::helm().await?, charts);
    let spec = spec();
    let shared = member(CLUSTER_PLACEHOLDER, NETWORK_PLACEHOLDER);
    let members = [
        member("east-1", "net-a"),
        member("west-2", "net-b"),
        member("c", "n"),
    ];
    let tags = Some(vec!["default".to_string(), "canary".to_string()]);
    for version in ["1.30", "1.31"] {
        let revision = version.replace('.', "-");
        let cases = [
            (
                Chart::Istiod,
                with_revision(istiod_values(&spec, &shared), &revision, tags.clone()),
                true,
            ),
            (
                Chart::Istiod,
                with_revision(istiod_values(&spec, &shared), "", None),
                true,
            ),
            (
                Chart::Gateway,
                east_west_gateway_values(&spec, &shared),
                false,
            ),
        ];
        for (chart, shared_values, istiod) in cases {
            let before = renderer.helm_runs();
            for m in &members {
                let substituted = renderer
                    .render(
                        &format!("prod/{}/{chart:?}", m.name),
                        version,
                        chart,
                        &shared_values,
                        "v1.37.2",
                        &[
                            (CLUSTER_PLACEHOLDER, &m.name),
                            (NETWORK_PLACEHOLDER, &m.network),
                        ],
                    )
                    .await?;
                let own_values = if istiod {
                    let revision = shared_values
                        .get("revision")
                        .and_then(|r| r.as_str())
                        .unwrap_or("");
                    let tags = shared_values
                        .get("revisionTags")
                        .map(|_| tags.clone().unwrap());
                    with_revision(istiod_values(&spec, m), revision, tags)
                } else {
                    east_west_gateway_values(&spec, m)
                };
                let direct = renderer
                    .render(
                        &format!("direct/{}", m.name),
                        version,
                        chart,
                        &own_values,
                        "v1.37.2",
                        &[],
                    )
                    .await?;
                assert_eq!(
                    serde_json::to_value(&substituted)?,
                    serde_json::to_value(&direct)?,
                    "{version} {chart:?} for {}",
                    m.name
                );
                let text = serde_json::to_string(&substituted)?;
                assert!(!text.contains("meshfed-placeholder"), "{version} {chart:?}");
                assert!(
                    text.contains(&m.name) || !istiod,
                    "the cluster name is in the render"
                );
            }
            // One shared render plus one per member's own values.
            assert_eq!(
                renderer.helm_runs() - before,
                1 + members.len() as u64,
                "{version} {chart:?}"
            );
        }
    }
    // Ten members at once: one helm run.
    let values = with_revision(istiod_values(&spec, &shared), "1-31", None);
    let before = renderer.helm_runs();
    let names: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let substitutions: Vec<[(&str, &str); 2]> = names
        .iter()
        .map(|n| {
            [
                (CLUSTER_PLACEHOLDER, n.as_str()),
                (NETWORK_PLACEHOLDER, "net"),
            ]
        })
        .collect();
    let users: Vec<String> = names.iter().map(|n| format!("prod/{n}/istiod")).collect();
    let renders = substitutions
        .iter()
        .zip(&users)
        .map(|(s, u)| renderer.render(u, "1.31", Chart::Istiod, &values, "v1.36.0", s));
    let all = futures::future::try_join_all(renders).await?;
    assert_eq!(renderer.helm_runs() - before, 1);
    assert_eq!(all.len(), 10);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshfed-charts-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
