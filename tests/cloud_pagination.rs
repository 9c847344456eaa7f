//! Pagination: walking `offset`/`limit` against the simulator returns every item exactly
//! once, in order, for any list size and any page size.

use obdgw::cloud::Credentials;
use obdgw::cloud::client::{Client, ClientSettings, collect_all};
use obdgw::cloud::model::Page;
use obdgw::config::Secret;
use obdgw::sim::cloud::data::{EmployeeRec, SimData};
use obdgw::sim::cloud::{self as sim, DEMO_CONNECTOR_UUID, DEMO_PINCODE, SimOptions};
use proptest::prelude::*;

fn fixture(n: usize) -> SimData {
    let mut d = SimData::builtin().unwrap();
    d.employees = (0..n)
        .map(|i| EmployeeRec {
            id: format!("00000000-0000-4000-8000-{i:012}"),
            given_name: format!("E{i}"),
            family_name: "Test".into(),
            username: format!("e{i}@example.com"),
            enabled: true,
            correspondence_locale: "en-GB".into(),
        })
        .collect();
    d
}

fn walk(n: usize, limit: u32) -> (Vec<String>, Vec<String>, i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = fixture(n);
        let want: Vec<String> = d.employees.iter().map(|e| e.id.clone()).collect();
        let r = sim::start(d, SimOptions::default(), None).await.unwrap();
        let c = Client::new(
            ClientSettings::for_base_url(&r.base_url),
            Some(Credentials::ConnectorUuid {
                uuid: DEMO_CONNECTOR_UUID.into(),
                pincode: Secret::new(DEMO_PINCODE),
            }),
            None,
        )
        .unwrap();
        let got: Vec<String> = collect_all(limit, |p| c.employees(p))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        let zero = c.employees(Page::new(0, 0)).await.unwrap();
        assert!(zero.result.is_empty(), "limit 0 returns no items");
        r.stop().await;
        (got, want, zero.total)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn every_item_exactly_once(n in 0usize..450, limit in 0u32..=200) {
        let (got, want, total) = walk(n, limit);
        prop_assert_eq!(total as usize, n);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn boundaries() {
    for (n, limit) in [(0, 1), (1, 1), (200, 200), (201, 200), (400, 200), (399, 7)] {
        let (got, want, _) = walk(n, limit);
        assert_eq!(got, want, "n={n} limit={limit}");
    }
}
