//! Where the source is: the request's cursor fields, the page reached and the plan of a page for `exactly_once`.

use super::*;

/// Where the source is: the source offset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Cursor {
    /// The first page of the request (its query filled from the cursor fields of then) that
    /// the last delivered record's page belongs to.
    #[serde(default)]
    pub(super) first: Option<String>,
    /// The page the last delivered record came from.
    #[serde(default)]
    pub(super) url: Option<String>,
    /// How many of its records were delivered.
    #[serde(default)]
    pub(super) after: usize,
    /// That page's next page, if it had one.
    #[serde(default)]
    pub(super) next: Option<String>,
    /// The id of the last delivered record.
    #[serde(default)]
    pub(super) last_id: Option<Value>,
    /// `cursor` fields from the last delivered record.
    #[serde(default)]
    pub(super) fields: IndexMap<String, String>,
    /// Records delivered since the first run: the next one's position for `exactly_once`
    /// (a resumed run numbers what it sends again as the first run did).
    #[serde(default)]
    pub(super) delivered: u64,
    /// With `exactly_once`: how the page being sent is numbered, stored before any of it is
    /// sent, so that a restart numbers it alike even if the page changed meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) plan: Option<Arc<Plan>>,
}

/// How the records of one page are numbered for `exactly_once`: each record on the page by its
/// fingerprint (its id, else a hash of its JSON text) and position. Asked for again, the
/// page's records are matched to the plan by fingerprint (the k-th of a fingerprint to its
/// k-th entry); records the plan does not hold get the next positions, after a store of the
/// plan so extended, so that positions only grow in the order records are sent. The plan
/// holds the records on the page when it was last read, so a page that slides (the latest N
/// records of a feed) keeps a plan of its own size; a record that left the page and comes
/// back later is numbered anew (sent again).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Plan {
    /// The page's request.
    pub(super) url: String,
    /// Each record's fingerprint and position, in the page's order.
    pub(super) entries: Vec<(String, u64)>,
    /// The position the next new record gets: above every position given so far.
    pub(super) end: u64,
}

impl Cursor {
    /// The cursor as a source offset.
    pub(super) fn to_offset(&self) -> Value {
        let page = PageRef {
            first: self.first.clone(),
            url: self.url.clone(),
            next: self.next.clone(),
            plan: self.plan.clone(),
        };
        self.mark(Arc::new(page)).to_offset()
    }

    /// The cursor as it is now, its page parts as `page`.
    pub(super) fn mark(&self, page: Arc<PageRef>) -> Mark {
        Mark {
            page,
            after: self.after,
            last_id: self.last_id.clone(),
            fields: self.fields.clone(),
            delivered: self.delivered,
        }
    }
}

/// The parts of the cursor that stay the same through a page.
#[derive(Debug, PartialEq)]
pub(super) struct PageRef {
    pub(super) first: Option<String>,
    pub(super) url: Option<String>,
    pub(super) next: Option<String>,
    pub(super) plan: Option<Arc<Plan>>,
}

/// The cursor after one buffered item. Its source offset is built only for the last item of
/// a polled batch: the runtime stores no other (see `SourceRecord::offset`), and building one
/// for every record cost a tenth of the source's time.
pub(super) struct Mark {
    pub(super) page: Arc<PageRef>,
    pub(super) after: usize,
    pub(super) last_id: Option<Value>,
    pub(super) fields: IndexMap<String, String>,
    pub(super) delivered: u64,
}

impl Mark {
    pub(super) fn to_offset(&self) -> Value {
        let text =
            |t: &Option<String>| t.as_ref().map_or(Value::Null, |t| Value::String(t.clone()));
        let mut offset = Map::with_capacity(7);
        offset.insert("first".into(), text(&self.page.first));
        offset.insert("url".into(), text(&self.page.url));
        offset.insert("after".into(), Value::from(self.after));
        offset.insert("next".into(), text(&self.page.next));
        offset.insert(
            "last_id".into(),
            self.last_id.clone().unwrap_or(Value::Null),
        );
        if !self.fields.is_empty() {
            let fields = self
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            offset.insert("fields".into(), Value::Object(fields));
        }
        offset.insert("delivered".into(), Value::from(self.delivered));
        if let Some(plan) = &self.page.plan {
            offset.insert(
                "plan".into(),
                serde_json::to_value(&**plan).unwrap_or(Value::Null),
            );
        }
        Value::Object(offset)
    }
}
