//! Session recordings: the policy of a project, the list, one recording's
//! metadata and segments, its cast (streamed, with a byte range), deletion.

use http::Method;
use hyper::body::Incoming;
use postern_api::recordings::{
    RecordingPage, RecordingPolicy, RecordingQuery, RecordingRetention, RecordingView, SegmentList,
};
use postern_api::routes::{self, API, path, query};

use crate::{Client, ClientError, api_error};

impl Client {
    pub async fn recording_policy(&self, project: &str) -> Result<RecordingPolicy, ClientError> {
        self.call(
            Method::GET,
            &path(API, routes::RECORDING_POLICY, &[project]),
            None::<&()>,
        )
        .await
    }

    /// How long the org keeps recordings (org admins).
    pub async fn recording_retention(&self) -> Result<RecordingRetention, ClientError> {
        self.call(
            Method::GET,
            &path(API, routes::ORG_RECORDING_RETENTION, &[]),
            None::<&()>,
        )
        .await
    }

    pub async fn set_recording_retention(
        &self,
        days: i64,
    ) -> Result<RecordingRetention, ClientError> {
        self.call(
            Method::PUT,
            &path(API, routes::ORG_RECORDING_RETENTION, &[]),
            Some(&RecordingRetention { days }),
        )
        .await
    }

    pub async fn set_recording_policy(
        &self,
        project: &str,
        policy: &RecordingPolicy,
    ) -> Result<RecordingPolicy, ClientError> {
        self.call(
            Method::PUT,
            &path(API, routes::RECORDING_POLICY, &[project]),
            Some(policy),
        )
        .await
    }

    pub async fn recordings(&self, f: &RecordingQuery) -> Result<RecordingPage, ClientError> {
        let q = query(&[
            ("limit", f.limit.map(|v| v.to_string())),
            ("offset", f.offset.map(|v| v.to_string())),
            ("user", f.user.clone()),
            ("node", f.node.clone()),
            ("project", f.project.clone()),
            ("mode", f.mode.clone()),
            ("since", f.since.clone()),
            ("until", f.until.clone()),
        ]);
        let p = format!("{}{q}", path(API, routes::RECORDINGS, &[]));
        self.call(Method::GET, &p, None::<&()>).await
    }

    pub async fn recording(&self, id: &str) -> Result<RecordingView, ClientError> {
        self.call(
            Method::GET,
            &path(API, routes::RECORDING, &[id]),
            None::<&()>,
        )
        .await
    }

    pub async fn recording_segments(&self, id: &str) -> Result<SegmentList, ClientError> {
        self.call(
            Method::GET,
            &path(API, routes::RECORDING_SEGMENTS, &[id]),
            None::<&()>,
        )
        .await
    }

    pub async fn delete_recording(&self, id: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::DELETE,
                &path(API, routes::RECORDING, &[id]),
                None::<&()>,
            )
            .await?;
        Ok(())
    }

    /// The cast from byte `from` on, as a body still to read (a recording may
    /// be far larger than any answer the client holds in memory).
    pub async fn recording_cast(&self, id: &str, from: u64) -> Result<Incoming, ClientError> {
        self.cast_body(routes::RECORDING_CAST, id, from).await
    }

    /// A session as it happens (org and project admins): the cast so far,
    /// then what is stored as it comes, until the session ends.
    pub async fn recording_live(&self, id: &str) -> Result<Incoming, ClientError> {
        self.cast_body(routes::RECORDING_LIVE, id, 0).await
    }

    async fn cast_body(&self, route: &str, id: &str, from: u64) -> Result<Incoming, ClientError> {
        let mut extra = Vec::new();
        if from > 0 {
            extra.push(("range", format!("bytes={from}-")));
        }
        let resp = self
            .conn
            .send(
                Method::GET,
                &path(API, route, &[id]),
                &self.headers(&extra),
                None,
            )
            .await?;
        let (parts, body) = resp.into_parts();
        if !parts.status.is_success() {
            use http_body_util::BodyExt;
            let bytes = http_body_util::Limited::new(body, 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(api_error(parts.status.as_u16(), &bytes));
        }
        Ok(body)
    }
}
