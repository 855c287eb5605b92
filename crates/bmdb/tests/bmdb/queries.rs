//! Workflow and tag queries.

use bmdb::model::OsInstallationResult;
use bmdb::{Process, Provider, Session, queries};
use uuid::Uuid;

use crate::common;

async fn agent_start_candidates(s: &Session) -> Vec<Uuid> {
    s.transact(|tx| {
        Box::pin(
            async move { queries::get_machines_for_agent_start(tx, 100, Provider::Equinix).await },
        )
    })
    .await
    .unwrap()
    .into_iter()
    .map(|m| m.machine_id)
    .collect()
}

async fn recovery_candidates(s: &Session) -> Vec<Uuid> {
    s.transact(|tx| {
        Box::pin(async move {
            queries::get_machine_for_agent_recovery(tx, 100, Provider::Equinix).await
        })
    })
    .await
    .unwrap()
    .into_iter()
    .map(|m| m.machine_id)
    .collect()
}

async fn exec(db: &bmdb::Bmdb, sql: &'static str, machine: Uuid) {
    sqlx::query(sql)
        .bind(machine)
        .execute(db.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn agent_start_candidates_follow_the_rules() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let plain = common::provided_machine(&s, "plain").await;
    let started = common::provided_machine(&s, "started").await;
    let installed = common::provided_machine(&s, "installed").await;
    let pending = common::provided_machine(&s, "pending").await;
    let busy = common::provided_machine(&s, "busy").await;
    s.transact(move |tx| {
        Box::pin(async move {
            queries::machine_set_agent_started(tx, started, &[1; 32]).await?;
            queries::machine_set_os_installation_request(tx, installed, 1, b"req").await?;
            queries::machine_set_os_installation_report(
                tx,
                installed,
                1,
                OsInstallationResult::Success,
                b"",
            )
            .await?;
            queries::machine_set_os_installation_request(tx, pending, 2, b"req").await?;
            queries::machine_set_os_installation_report(
                tx,
                pending,
                1,
                OsInstallationResult::Success,
                b"",
            )
            .await?;
            Ok(())
        })
    })
    .await
    .unwrap();
    let w = s
        .work(Process::ShepherdAccess, move |_| {
            Box::pin(async move { Ok(vec![busy]) })
        })
        .await
        .unwrap();
    let mut want = vec![plain, pending];
    want.sort();
    assert_eq!(agent_start_candidates(&s).await, want);
    w.cancel().await.unwrap();
    let mut want = vec![plain, pending, busy];
    want.sort();
    assert_eq!(agent_start_candidates(&s).await, want);
    // Other providers' machines are not listed.
    let lumen = s
        .transact(|tx| {
            Box::pin(async move {
                let m = queries::new_machine(tx).await?;
                queries::machine_add_provided(tx, m.machine_id, Provider::Lumen, "l1").await?;
                Ok(m.machine_id)
            })
        })
        .await
        .unwrap();
    assert!(!agent_start_candidates(&s).await.contains(&lumen));
}

#[tokio::test]
async fn recovery_candidates_follow_the_rules() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let mut machines = Vec::new();
    for name in ["fresh", "never-beat", "silent", "beating", "installed"] {
        let m = common::provided_machine(&s, name).await;
        s.transact(move |tx| {
            Box::pin(async move { queries::machine_set_agent_started(tx, m, &[2; 32]).await })
        })
        .await
        .unwrap();
        machines.push(m);
    }
    let [fresh, never_beat, silent, beating, installed] = machines[..] else {
        unreachable!()
    };
    let _ = fresh; // Started just now, no heartbeat yet: give it time.
    exec(&db, "UPDATE machine_agent_started SET agent_started_at = now() - INTERVAL '31 minutes' WHERE machine_id = $1", never_beat).await;
    s.transact(move |tx| {
        Box::pin(async move {
            queries::machine_set_agent_heartbeat(tx, silent).await?;
            queries::machine_set_agent_heartbeat(tx, beating).await?;
            queries::machine_set_agent_heartbeat(tx, installed).await?;
            queries::machine_set_os_installation_request(tx, installed, 3, b"").await?;
            queries::machine_set_os_installation_report(
                tx,
                installed,
                3,
                OsInstallationResult::Success,
                b"",
            )
            .await
        })
    })
    .await
    .unwrap();
    exec(&db, "UPDATE machine_agent_heartbeat SET agent_heartbeat_at = now() - INTERVAL '11 minutes' WHERE machine_id = $1", silent).await;
    exec(&db, "UPDATE machine_agent_heartbeat SET agent_heartbeat_at = now() - INTERVAL '11 minutes' WHERE machine_id = $1", installed).await;
    let mut want = vec![never_beat, silent];
    want.sort();
    assert_eq!(recovery_candidates(&s).await, want);

    // A failed installation does not protect the machine from recovery.
    s.transact(move |tx| {
        Box::pin(async move {
            queries::machine_set_os_installation_report(
                tx,
                installed,
                3,
                OsInstallationResult::Error,
                b"",
            )
            .await
        })
    })
    .await
    .unwrap();
    let mut want = vec![never_beat, silent, installed];
    want.sort();
    assert_eq!(recovery_candidates(&s).await, want);
}

#[tokio::test]
async fn agent_authentication_needs_machine_and_key() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let m = common::provided_machine(&s, "1").await;
    let other = common::provided_machine(&s, "2").await;
    s.transact(move |tx| {
        Box::pin(async move { queries::machine_set_agent_started(tx, m, &[9; 32]).await })
    })
    .await
    .unwrap();
    let auth = |machine: Uuid, key: [u8; 32]| {
        let s = s.clone();
        async move {
            s.transact(move |tx| {
                Box::pin(
                    async move { queries::authenticate_agent_connection(tx, machine, &key).await },
                )
            })
            .await
            .unwrap()
            .len()
        }
    };
    assert_eq!(auth(m, [9; 32]).await, 1);
    assert_eq!(auth(m, [8; 32]).await, 0);
    assert_eq!(auth(other, [9; 32]).await, 0);
    assert_eq!(auth(Uuid::new_v4(), [9; 32]).await, 0);
}

#[tokio::test]
async fn pending_installation_by_generation() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let m = common::provided_machine(&s, "1").await;
    let pending = || {
        let s = s.clone();
        async move {
            s.transact(move |tx| {
                Box::pin(async move { queries::get_exact_machine_for_os_installation(tx, m).await })
            })
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.generation)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(pending().await, Vec::<i64>::new());
    s.transact(move |tx| {
        Box::pin(
            async move { queries::machine_set_os_installation_request(tx, m, 1, b"one").await },
        )
    })
    .await
    .unwrap();
    assert_eq!(pending().await, vec![1]);
    s.transact(move |tx| {
        Box::pin(async move {
            queries::machine_set_os_installation_report(
                tx,
                m,
                1,
                OsInstallationResult::Success,
                b"ok",
            )
            .await
        })
    })
    .await
    .unwrap();
    assert_eq!(pending().await, Vec::<i64>::new());
    s.transact(move |tx| {
        Box::pin(
            async move { queries::machine_set_os_installation_request(tx, m, 2, b"two").await },
        )
    })
    .await
    .unwrap();
    assert_eq!(pending().await, vec![2]);
}

#[tokio::test]
async fn list_machines_with_tags_and_paging() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let a = common::provided_machine(&s, "a").await;
    let b = common::provided_machine(&s, "b").await;
    let bare = s
        .transact(|tx| Box::pin(async move { Ok(queries::new_machine(tx).await?.machine_id) }))
        .await
        .unwrap();
    s.transact(move |tx| {
        Box::pin(async move {
            queries::machine_set_agent_started(tx, a, &[3; 32]).await?;
            queries::machine_set_agent_heartbeat(tx, a).await?;
            queries::machine_set_hardware_report(tx, a, b"hw").await?;
            queries::machine_set_os_installation_request(tx, a, 4, b"req").await?;
            queries::machine_set_os_installation_report(
                tx,
                a,
                4,
                OsInstallationResult::Error,
                b"rep",
            )
            .await
        })
    })
    .await
    .unwrap();

    let all = s
        .transact(|tx| Box::pin(async move { queries::list_machines(tx, None, 100).await }))
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = all.iter().map(|m| m.machine.machine_id).collect();
    let mut want = vec![a, b, bare];
    want.sort();
    assert_eq!(ids, want);
    let ma = all.iter().find(|m| m.machine.machine_id == a).unwrap();
    assert_eq!(ma.provided.as_ref().unwrap().provider_id, "a");
    assert_eq!(
        ma.agent_started.as_ref().unwrap().agent_public_key,
        vec![3; 32]
    );
    assert!(ma.agent_heartbeat.is_some());
    assert_eq!(
        ma.hardware_report.as_ref().unwrap().hardware_report_raw,
        b"hw"
    );
    assert_eq!(ma.os_installation_request.as_ref().unwrap().generation, 4);
    let rep = ma.os_installation_report.as_ref().unwrap();
    assert_eq!(
        (rep.generation, rep.os_installation_result),
        (4, OsInstallationResult::Error)
    );
    let mbare = all.iter().find(|m| m.machine.machine_id == bare).unwrap();
    assert!(
        mbare.provided.is_none()
            && mbare.agent_started.is_none()
            && mbare.hardware_report.is_none()
    );

    // Paging: two, then the rest.
    let first = s
        .transact(|tx| Box::pin(async move { queries::list_machines(tx, None, 2).await }))
        .await
        .unwrap();
    let after = first.last().unwrap().machine.machine_id;
    let rest = s
        .transact(move |tx| {
            Box::pin(async move { queries::list_machines(tx, Some(after), 2).await })
        })
        .await
        .unwrap();
    ids = first
        .iter()
        .chain(rest.iter())
        .map(|m| m.machine.machine_id)
        .collect();
    assert_eq!(ids, want);

    let one = s
        .transact(move |tx| Box::pin(async move { queries::get_machine(tx, b).await }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.machine.machine_id, b);
    let none = s
        .transact(|tx| Box::pin(async move { queries::get_machine(tx, Uuid::new_v4()).await }))
        .await
        .unwrap();
    assert!(none.is_none());
}

/// An agent's report is stored only for the current request's generation, under that
/// generation; and the plain read outside transactions sees committed tags.
#[tokio::test]
async fn agent_reports_follow_the_current_request() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let m = common::provided_machine(&s, "reporting").await;
    let report = |generation: i64, result: OsInstallationResult| {
        let s = s.clone();
        async move {
            s.transact(move |tx| {
                Box::pin(async move {
                    queries::machine_report_os_installation(tx, m, generation, result, b"raw").await
                })
            })
            .await
            .unwrap()
        }
    };
    let stored = || {
        let s = s.clone();
        async move {
            s.transact(move |tx| Box::pin(async move { queries::get_machine(tx, m).await }))
                .await
                .unwrap()
                .unwrap()
                .os_installation_report
                .map(|r| (r.generation, r.os_installation_result))
        }
    };

    assert!(
        !report(1, OsInstallationResult::Success).await,
        "no request"
    );
    assert_eq!(stored().await, None);
    s.transact(move |tx| {
        Box::pin(
            async move { queries::machine_set_os_installation_request(tx, m, 4, b"req").await },
        )
    })
    .await
    .unwrap();
    assert!(
        !report(3, OsInstallationResult::Success).await,
        "old generation"
    );
    assert!(
        !report(5, OsInstallationResult::Success).await,
        "future generation"
    );
    assert_eq!(stored().await, None);
    assert!(report(4, OsInstallationResult::Error).await);
    assert_eq!(stored().await, Some((4, OsInstallationResult::Error)));
    // The same generation again (an agent retrying after a lost answer) replaces it.
    assert!(report(4, OsInstallationResult::Success).await);
    assert_eq!(stored().await, Some((4, OsInstallationResult::Success)));
    assert!(!report(3, OsInstallationResult::Error).await);
    assert_eq!(stored().await, Some((4, OsInstallationResult::Success)));

    let known = db
        .read(|conn| {
            Box::pin(async move { queries::authenticate_agent_connection(conn, m, &[9; 32]).await })
        })
        .await
        .unwrap();
    assert!(known.is_empty(), "no agent was started with that key");
}
