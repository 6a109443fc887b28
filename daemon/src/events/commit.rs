//! Group commit of accepted events.

use std::sync::Arc;

use super::{EventQueue, EventsError, NewEvent};

/// An event handed to the committer, and where its outcome goes.
pub(super) type Accepting = (
    NewEvent,
    tokio::sync::oneshot::Sender<Result<(), EventsError>>,
);

/// Events accepted together share one commit: a thread takes every event
/// waiting (up to 256), writes them in one transaction with one sync, and
/// answers each. One client waits for one commit as before; many clients
/// share theirs.
pub(super) fn spawn_committer(queue: Arc<EventQueue>) -> std::sync::mpsc::Sender<Accepting> {
    let (tx, rx) = std::sync::mpsc::channel::<Accepting>();
    let run = move || {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let events: Vec<&NewEvent> = batch.iter().map(|(e, _)| e).collect();
            let result = queue.accept_all(&events);
            for (_, reply) in batch {
                let _ = reply.send(match &result {
                    Ok(()) => Ok(()),
                    Err(EventsError::DiskFull) => Err(EventsError::DiskFull),
                    Err(e) => Err(EventsError::Commit(crate::error_chain(e))),
                });
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("flint-accept".into())
        .spawn(run)
    {
        tracing::error!(error = %e, "the event queue's committer could not start");
    }
    tx
}
