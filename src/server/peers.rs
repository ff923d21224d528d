//! The fleet's view of `/cameras`: this instance's cameras and those of its `PEERS`, asked in
//! parallel with a short deadline, merged into one page with the instance that holds each
//! camera, and the peers that did not answer named (their cameras are missing, not gone).
//! The peers are `PEERS` as given, and the addresses `PEERS_DNS` resolves to at that moment.
//! It must not ask a peer for anything but its own cameras (`scope=instance`), so views never
//! ask each other in a loop.

use std::net::ToSocketAddrs;
use std::time::Duration;

use crate::log::log_warn;
use crate::protocol::{CameraInfo, CamerasResponse, Route};
use crate::settings::ServerConfig;

/// A peer that has not answered within this is reported as unreachable.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// The peers to ask now, `None` outside a fleet. A headless Service's name resolves to every
/// ready instance, this one included: its own answer merges like any other. A name that does
/// not resolve is asked as it is, so that the view lists it as unreachable.
pub fn of(config: &ServerConfig) -> Option<Vec<String>> {
    let found = config.peers_dns.as_deref().map(|dns| addresses(dns).unwrap_or(vec![dns.into()]));
    let peers = config.peers.iter().chain(found.as_ref()).flatten().cloned();
    (config.peers.is_some() || found.is_some()).then(|| peers.collect())
}

fn addresses(base: &str) -> Option<Vec<String>> {
    let url = url::Url::parse(base).ok()?;
    let found = (url.host_str()?, url.port_or_known_default()?).to_socket_addrs().ok()?;
    Some(found.map(|address| format!("{}://{address}", url.scheme())).collect())
}

/// One page of the fleet's cameras: this instance's (`own`) and the peers', at most `limit` ids
/// after `after`, each camera once (where it is online, else where it was seen last).
pub fn fleet_page(
    (own_name, own): (&str, Vec<CameraInfo>), peers: &[String],
    (after, limit): (Option<&str>, usize), authorization: Option<&str>,
) -> CamerasResponse {
    let answers: Vec<Result<CamerasResponse, String>> = std::thread::scope(|scope| {
        let asked: Vec<_> = peers
            .iter()
            .map(|peer| scope.spawn(move || ask(peer, after, limit, authorization)))
            .collect();
        asked.into_iter().map(|a| a.join().unwrap_or(Err("panicked".into()))).collect()
    });
    let (mut rows, mut more, mut unreachable) = (Vec::new(), false, Vec::new());
    let pages = std::iter::once((own_name, Ok(CamerasResponse::page(own, after, limit, false))));
    for (instance, answer) in pages.chain(peers.iter().map(String::as_str).zip(answers)) {
        match answer {
            Ok(page) => {
                more |= page.next_after.is_some();
                // A row names its instance when the instance has a name (INSTANCE_NAME).
                let named = |row: CameraInfo| CameraInfo {
                    instance: row.instance.or_else(|| Some(instance.to_string())),
                    ..row
                };
                rows.extend(page.cameras.into_iter().map(named));
            }
            Err(why) => {
                log_warn!("peer {instance} did not list its cameras: {why}");
                unreachable.push(instance.to_string());
            }
        }
    }
    rows.sort_by(|a, b| {
        let id = a.camera_id.cmp(&b.camera_id);
        id.then(b.online.cmp(&a.online)).then(b.last_seen.total_cmp(&a.last_seen))
    });
    rows.dedup_by(|later, first| later.camera_id == first.camera_id);
    let page = CamerasResponse::page(rows, after, limit, more);
    CamerasResponse { scope: "fleet".to_string(), unreachable, ..page }
}

/// One page of `peer`'s own cameras.
fn ask(
    peer: &str, after: Option<&str>, limit: usize, authorization: Option<&str>,
) -> Result<CamerasResponse, String> {
    let base = url::Url::parse(peer).map_err(|e| e.to_string())?;
    let limit = limit.to_string();
    let mut query = vec![("scope", "instance"), ("limit", limit.as_str())];
    query.extend(after.map(|after| ("after", after)));
    let url = Route::Cameras.url(&base, &query);
    let config = ureq::Agent::config_builder().timeout_global(Some(PEER_TIMEOUT)).build();
    let mut request = ureq::Agent::new_with_config(config).get(url.as_str());
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let mut response = request.call().map_err(|e| e.to_string())?;
    response.body_mut().read_json().map_err(|e| e.to_string())
}
