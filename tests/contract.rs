//! The page and the contract as files the server serves: without a token, exactly as written,
//! loading nothing from elsewhere; the contract's paths are exactly the routes.

use crate::common::*;
use camera_logs::ServerConfig;

const TOKEN: &str = "contract-test-token";

#[test]
fn the_page_and_the_contract_are_served_without_a_token() {
    let config = ServerConfig { api_token: Some(TOKEN.to_string()), ..test_config() };
    let server = TestServer::start(config);
    let page = get(&format!("{}/", server.url));
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|p| p.contains("default-src 'none'") && p.contains("connect-src 'self'")));
    assert!(page.text().contains("<title>camera-logs</title>"));
    assert!(
        !page.text().contains("http://") && !page.text().contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let spec = get(&format!("{}/openapi.yaml", server.url));
    assert_eq!(spec.status, 200);
    assert_eq!(spec.header("content-type"), Some("application/yaml"));
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    assert_eq!(spec.text(), file, "served exactly as written");
    assert!(file.starts_with("# ") && file.contains("\nopenapi: 3.1.0\n"));

    // The spec's paths are exactly the routes (the metrics' route labels, less "other").
    let documented: Vec<&str> = file
        .lines()
        .skip_while(|l| *l != "paths:")
        .take_while(|l| *l != "components:")
        .filter_map(|l| l.strip_prefix("  /").map(|p| p.trim_end_matches(':')))
        .collect();
    let mut documented: Vec<String> = documented.iter().map(|p| format!("/{p}")).collect();
    documented.sort();
    let mut routes: Vec<String> =
        camera_logs::Route::ALL.iter().map(|r| r.path().to_string()).collect();
    routes.sort();
    assert_eq!(documented, routes);
    for route in &routes {
        let status = get(&format!("{}{route}", server.url)).status;
        assert_ne!(status, 404, "{route} is routed");
    }
}
