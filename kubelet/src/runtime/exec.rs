//! Running a command in a running container (exec probes now, `kubectl exec` later): a
//! containerd exec process with the container's own process spec and new args.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest,
};
use tokio::sync::watch;

use super::{Runtime, LABEL_POD_UID};
use crate::error::{Context, Error, Result};
use crate::logs;
use crate::sys;

/// Output is capped: a probe or exec that prints megabytes only needs its beginning.
pub const MAX_OUTPUT: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct ExecOutput {
    /// None when the command was killed at its timeout.
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

impl Runtime {
    /// Run `cmd` inside container `id` and collect its output; killed after `timeout`.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let what = || format!("exec {cmd:?} in container {id}");
        if cmd.is_empty() {
            return Err(Error::invalid(what(), "empty command"));
        }
        let cd = &self.cd;
        let container = cd
            .containers()
            .get(cd.req(GetContainerRequest { id: id.into() }, None))
            .await
            .context(what)?
            .into_inner()
            .container
            .unwrap_or_default();
        let spec: serde_json::Value = container
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| Error::invalid(what(), "the container has no readable spec"))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let process_any = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).unwrap_or_default(),
        };

        let uid = container
            .labels
            .get(LABEL_POD_UID)
            .cloned()
            .unwrap_or_default();
        let fifo_dir = self.config.pod_dir(&uid).join("fifo");
        let exec_id = format!(
            "exec-{}-{}",
            std::process::id(),
            EXEC_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (out_path, err_path) = logs::fifo_paths(&fifo_dir, &format!("{id}-{exec_id}"));
        sys::create_dir_all(&fifo_dir).context(what)?;
        sys::mkfifo(&out_path).context(what)?;
        sys::mkfifo(&err_path).context(what)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let out_reader = tokio::spawn(collect(
            sys::open_fifo_reader(&out_path).context(what)?,
            stop_rx.clone(),
        ));
        let err_reader = tokio::spawn(collect(
            sys::open_fifo_reader(&err_path).context(what)?,
            stop_rx,
        ));

        let result = self
            .exec_process(id, &exec_id, process_any, &out_path, &err_path, timeout)
            .await;
        let _ = stop_tx.send(true);
        let stdout = out_reader.await.unwrap_or_default();
        let stderr = err_reader.await.unwrap_or_default();
        let _ = sys::remove_file(&out_path);
        let _ = sys::remove_file(&err_path);
        Ok(ExecOutput {
            exit_code: result.context(what)?,
            stdout,
            stderr,
        })
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        spec: prost_types::Any,
        stdout: &std::path::Path,
        stderr: &std::path::Path,
        timeout: Duration,
    ) -> std::result::Result<Option<i32>, containerd_client::tonic::Status> {
        let cd = &self.cd;
        let (cid, eid) = (id.to_string(), exec_id.to_string());
        cd.tasks()
            .exec(cd.req(
                ExecProcessRequest {
                    container_id: cid.clone(),
                    stdout: stdout.display().to_string(),
                    stderr: stderr.display().to_string(),
                    spec: Some(spec),
                    exec_id: eid.clone(),
                    ..Default::default()
                },
                None,
            ))
            .await?;
        // Wait is registered before Start so a fast exit is never missed.
        let mut tasks = cd.tasks();
        let wait_req = cd.req(
            WaitRequest {
                container_id: cid.clone(),
                exec_id: eid.clone(),
            },
            None,
        );
        let waiter = tokio::spawn(async move { tasks.wait(wait_req).await });
        let started = cd
            .tasks()
            .start(cd.req(
                StartRequest {
                    container_id: cid.clone(),
                    exec_id: eid.clone(),
                },
                None,
            ))
            .await;
        let exit = match started {
            Err(s) => {
                waiter.abort();
                Err(s)
            }
            Ok(_) => match tokio::time::timeout(timeout, waiter).await {
                Ok(Ok(Ok(r))) => Ok(Some(r.into_inner().exit_status as i32)),
                Ok(Ok(Err(s))) => Err(s),
                Ok(Err(_)) => Ok(None),
                Err(_) => {
                    let kill = KillRequest {
                        container_id: cid.clone(),
                        exec_id: eid.clone(),
                        signal: 9,
                        all: false,
                    };
                    let _ = cd.tasks().kill(cd.req(kill, None)).await;
                    Ok(None)
                }
            },
        };
        let del = DeleteProcessRequest {
            container_id: cid,
            exec_id: eid,
        };
        // Delete fails while a killed process is still exiting; retry briefly.
        for _ in 0..50 {
            match cd.tasks().delete_process(cd.req(del.clone(), None)).await {
                Ok(_) => break,
                Err(s) if s.code() == containerd_client::tonic::Code::NotFound => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        exit
    }
}

/// Read a FIFO until told to stop, then take what is still buffered.
async fn collect(
    fifo: tokio::net::unix::pipe::Receiver,
    mut stop: watch::Receiver<bool>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let take = |out: &mut Vec<u8>, n: usize, chunk: &[u8]| {
        let room = MAX_OUTPUT.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..n.min(room)]);
    };
    loop {
        tokio::select! {
            ready = fifo.readable() => {
                if ready.is_err() { break; }
                match fifo.try_read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => take(&mut out, n, &chunk),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = stop.changed() => {
                while let Ok(n) = fifo.try_read(&mut chunk) {
                    if n == 0 { break; }
                    take(&mut out, n, &chunk);
                }
                break;
            }
        }
    }
    out
}
