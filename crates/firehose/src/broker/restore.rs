//! Startup: retained messages and persistent sessions back from the store.

use std::sync::Arc;

use firehose_codec::{Protocol, QoS};

use super::message::{now_ms, Delivery, Message};
use super::session::{Session, Stage};
use super::shared::Shared;
use super::subscription::SubOptions;
use crate::store::StoreError;

/// Loads the retained messages into the router, all of them: a quota lowered since they were
/// kept refuses new retained topics until enough are cleared, and forgets none.
pub(super) fn retained(shared: &Shared) -> Result<(), StoreError> {
    for event in shared.store().load_retained()? {
        shared
            .router()
            .retained()
            .set(&Arc::new(Message::from_event(&event)));
    }
    if let Some(full) = shared.router().retained().over_quota() {
        let usage = shared.router().retained().usage();
        tracing::warn!(
            messages = usage.messages,
            bytes = usage.bytes,
            "the stored retained messages exceed the retained quota ({full}): new retained topics are refused until enough are cleared"
        );
    }
    Ok(())
}

/// Re-creates every unexpired persistent session, offline and lagging from its cursor, and
/// forgets the expired ones.
pub(super) fn sessions(shared: &Arc<Shared>) -> Result<(), StoreError> {
    let now = now_ms();
    let queue_limit = usize::try_from(shared.limits().send_queue).unwrap_or(usize::MAX);
    let mut restored = 0;
    for stored in shared.store().load_sessions()? {
        let remaining_secs = match stored.disconnected_at_ms {
            _ if stored.expiry_interval == u32::MAX => None,
            // A session that was connected when the broker stopped counts from now.
            None => Some(u64::from(stored.expiry_interval)),
            Some(at) => {
                let ends = at.saturating_add(i64::from(stored.expiry_interval) * 1000);
                if ends <= now {
                    shared.store().delete_session(&stored.client_id);
                    continue;
                }
                Some(u64::try_from((ends - now) / 1000).unwrap_or(0).max(1))
            }
        };
        let session = Arc::new(Session::new(
            stored.client_id.as_str().into(),
            Protocol::V5,
            stored.expiry_interval,
            queue_limit,
            stored.cursor,
        ));
        {
            let mut state = session.lock();
            for sub in &stored.subscriptions {
                let options = SubOptions {
                    qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: sub.no_local,
                    retain_as_published: sub.retain_as_published,
                    id: sub.subscription_id,
                };
                state.subscriptions.insert(sub.filter.clone(), options);
            }
            for inflight in &stored.inflight {
                if inflight.stage == 2 {
                    state.delivered_ahead.insert(inflight.event_id);
                    continue;
                }
                let Some(event) = shared.store().get(inflight.event_id)? else {
                    continue; // deleted by retention meanwhile
                };
                let message = Arc::new(Message::from_event(&event));
                let qos = QoS::from_u8(inflight.qos).unwrap_or(QoS::AtLeastOnce);
                let stage = match (qos, inflight.stage) {
                    (QoS::ExactlyOnce, 1) => Stage::AwaitPubComp,
                    (QoS::ExactlyOnce, _) => Stage::AwaitPubRec,
                    _ => Stage::AwaitPubAck,
                };
                state.delivered_ahead.insert(inflight.event_id);
                let delivery = Delivery {
                    retain: false,
                    subscription_ids: Vec::new(),
                    from_log: true,
                    qos,
                    message,
                };
                state.add_inflight(inflight.packet_id, delivery, stage);
            }
            state
                .incoming_qos2
                .extend(stored.incoming_qos2.iter().copied());
        }
        for sub in &stored.subscriptions {
            let options = session.lock().subscriptions.get(&sub.filter).copied();
            if let Some(options) = options {
                shared.router().subscribe(&session, &sub.filter, options);
            }
        }
        shared.registry().restore(session.clone());
        if let Some(secs) = remaining_secs {
            shared.schedule_expiry(session, 0, secs);
        }
        restored += 1;
    }
    if restored > 0 {
        tracing::info!(
            sessions = restored,
            "restored persistent sessions from the store"
        );
    }
    Ok(())
}
