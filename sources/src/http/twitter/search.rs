//! `mode: recent_search`: scans of recent search, newest post first, resumable within a scan.

use super::api::Api;
use super::*;

/// Where recent search is: the scan under way, from the newest post down.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Scan {
    /// Posts newer than this one are asked for (the newest of the last complete scan).
    pub(super) since_id: Option<String>,
    /// The newest post of the scan under way: `since_id` once it is read to its end.
    pub(super) newest_id: Option<String>,
    /// `next_token` of the page to ask for next; `None`: the scan's first page.
    pub(super) page: Option<String>,
    /// Posts at or above this id on `page` were delivered (a restart within a page).
    pub(super) last_id: Option<u64>,
    /// A scan is under way (its first page was read).
    pub(super) under_way: bool,
    /// `start_time` of the scan under way, when X refused its `since_id` as older than
    /// 7 days.
    pub(super) from: Option<String>,
}

impl Scan {
    pub(super) fn from_offset(offset: Option<&Value>) -> Scan {
        let text = |k: &str| {
            offset
                .and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .map(String::from)
        };
        let newest_id = text("newest_id");
        Scan {
            since_id: text("since_id"),
            under_way: newest_id.is_some(),
            newest_id,
            page: text("page"),
            last_id: text("last_id").and_then(|id| id.parse().ok()),
            from: None,
        }
    }

    /// The offset after delivering post `id` (none yet: `None`) of the page asked for with
    /// `page`.
    pub(super) fn offset_within(&self, page: &Option<String>, id: Option<&str>) -> Value {
        json!({
            "since_id": self.since_id,
            "newest_id": self.newest_id,
            "page": page,
            "last_id": id,
        })
    }

    /// The offset once the scan is read to its end.
    pub(super) fn offset_done(since_id: &Option<String>) -> Value {
        json!({ "since_id": since_id })
    }
}

pub(super) struct SearchSource {
    pub(super) api: Api,
    pub(super) scan: Scan,
    pub(super) due: Option<tokio::time::Instant>,
    pub(super) recent: Recent,
    pub(super) buffered: VecDeque<SourceRecord>,
}

#[async_trait]
impl Source for SearchSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        if self.buffered.is_empty() {
            if !self.scan.under_way {
                if let Some(due) = self.due {
                    tokio::time::sleep_until(due).await;
                }
                self.due = Some(tokio::time::Instant::now() + self.api.config.interval);
            }
            self.read_page().await?;
        }
        let take = max.min(self.buffered.len());
        Ok(Some(self.buffered.drain(..take).collect()))
    }
}

impl SearchSource {
    pub(super) async fn read_page(&mut self) -> Result<(), ConnectorError> {
        let page = self.scan.page.clone();
        let answer = self
            .api
            .search_page(
                self.scan.since_id.as_deref(),
                &mut self.scan.from,
                page.as_deref(),
            )
            .await?;
        let meta = &answer["meta"];
        if !self.scan.under_way {
            self.scan.under_way = true;
            self.scan.newest_id = meta["newest_id"].as_str().map(String::from);
        }
        let posts = match answer.get("data") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(posts)) => posts.as_slice(),
            Some(_) => {
                let raw = answer.to_string().into_bytes();
                let bad = self.api.bad(
                    SEARCH_PARTITION,
                    Scan::offset_done(&self.scan.since_id),
                    format!("`data` is not a list of posts: {}", excerpt(&raw)),
                    raw,
                );
                self.buffered.push_back(bad);
                &[][..]
            }
        };
        let delivered_through = self.scan.last_id.take();
        // The last post delivered from this page: where a bad item leaves the offset.
        let mut last_delivered: Option<&str> = None;
        for post in posts {
            let Some(record) = self.api.record(post, &answer["includes"], None) else {
                let raw = post.to_string().into_bytes();
                let bad = self.api.bad(
                    SEARCH_PARTITION,
                    self.scan.offset_within(&page, last_delivered),
                    format!("a post without an id: {}", excerpt(&raw)),
                    raw,
                );
                self.buffered.push_back(bad);
                continue;
            };
            let id = post["id"].as_str().unwrap_or_default();
            let number: Option<u64> = id.parse().ok();
            let delivered =
                matches!((number, delivered_through), (Some(n), Some(through)) if n >= through);
            if delivered || !self.recent.insert(id) {
                continue;
            }
            last_delivered = Some(id);
            self.buffered.push_back(SourceRecord {
                partition: SEARCH_PARTITION.into(),
                offset: self.scan.offset_within(&page, Some(id)),
                position: None,
                payload: Payload::Record(record),
            });
        }
        match meta["next_token"].as_str() {
            Some(next) => self.scan.page = Some(next.to_string()),
            None => {
                // The scan is read to its end: the next one asks for what is newer than it.
                if self.scan.newest_id.is_some() {
                    self.scan.since_id = self.scan.newest_id.take();
                }
                self.scan.page = None;
                self.scan.from = None;
                self.scan.under_way = false;
                let done = Scan::offset_done(&self.scan.since_id);
                if let Some(last) = self.buffered.back_mut() {
                    last.offset = done;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_search_offset_within_a_scan_resumes_at_its_page() {
        let scan = Scan {
            since_id: Some("100".into()),
            newest_id: Some("200".into()),
            page: None,
            last_id: None,
            under_way: true,
            from: None,
        };
        let offset = scan.offset_within(&Some("tok".into()), Some("150"));
        let resumed = Scan::from_offset(Some(&offset));
        assert_eq!(
            resumed,
            Scan {
                since_id: Some("100".into()),
                newest_id: Some("200".into()),
                page: Some("tok".into()),
                last_id: Some(150),
                under_way: true,
                from: None,
            }
        );
        let done = Scan::from_offset(Some(&Scan::offset_done(&Some("200".into()))));
        assert_eq!(done.since_id.as_deref(), Some("200"));
        assert!(!done.under_way);
    }
}
