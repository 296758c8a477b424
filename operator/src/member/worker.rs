//! One worker per member: its own trigger, backoff, timeout and report. The
//! federation's reconcile decides what (membership, the root); each worker
//! makes its member so, writes into its own member only (and, renewing the
//! operator's own token for it, into that member's credentials Secret in
//! the operator's namespace), publishes what its
//! peers need of it ([`PeerFacts`]), and asks for the federation's status to
//! be aggregated when it is done. A member that hangs holds up its own
//! worker and nobody else's.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::control_plane::sync_member_control_plane;
use super::prepare::{Step, prepare_member};
use super::remote_secrets::{
    self, Binding, PeerFacts, TokenPolicy, held_by_departed, mint_token, refresh_request, revocable,
};
use super::{MemberContext, PreparedMember, api_server_answered, error_text};
use crate::api::{Member, MeshFederation};
use crate::apply::delete;
use crate::events::{Event, Reason};
use crate::fleet::ca::CaMaterial;
use crate::fleet::report::{Contact, MemberReport, MemberRun};
use crate::fleet::rollout::ControlPlanePlan;
use crate::pki::IntermediatePolicy;
use crate::render::{ISTIO_NAMESPACE, IssuedToken, TokenSubject, keys, minted_before, reader_name};

/// What a worker works from: the federation as last reconciled, its root,
/// the member's entry, and the members withdrawn from their peers' view.
#[derive(Clone)]
pub struct Input {
    pub fed: Arc<MeshFederation>,
    /// The CA material, or why the federation's CA cannot be prepared now:
    /// then the member's `cacerts` is left alone and everything else goes on.
    pub ca: Result<Arc<CaMaterial>, String>,
    pub member: Member,
    /// The cluster the member held, on record (`meshfed-clusters-<federation>`).
    pub held_cluster: Option<String>,
    pub withdrawn: Arc<BTreeSet<String>>,
    /// What the member's control plane should be (Managed).
    pub plan: ControlPlanePlan,
    /// The latest departure's generation (`fleet::membership::Departure`).
    pub departure: Option<i64>,
}

impl Input {
    /// Whether `other` asks for different work (a new generation, root,
    /// entry or withdrawn set).
    fn differs(&self, other: &Input) -> bool {
        self.fed.metadata.generation != other.fed.metadata.generation
            || ca_fingerprint(&self.ca) != ca_fingerprint(&other.ca)
            || self.member != other.member
            || self.held_cluster != other.held_cluster
            || self.withdrawn != other.withdrawn
            || self.plan != other.plan
            || self.departure != other.departure
            || refresh_request(&self.fed) != refresh_request(&other.fed)
    }
}

/// What of the CA material a member's work depends on.
fn ca_fingerprint(ca: &Result<Arc<CaMaterial>, String>) -> Result<(&str, Option<&str>), &str> {
    match ca {
        Ok(ca) => Ok((
            &ca.target_id,
            ca.signing.as_ref().ok().map(|r| r.info().serial.as_str()),
        )),
        Err(why) => Err(why),
    }
}

/// Every worker of every federation, and what they share.
pub struct Workers {
    aggregate: mpsc::UnboundedSender<ObjectRef<MeshFederation>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    workers: HashMap<(String, String), Worker>,
    /// What each member published, by federation and member.
    facts: HashMap<String, BTreeMap<String, PeerFacts>>,
    /// Members asked by a peer to mint a token.
    wanted: HashSet<(String, String)>,
    runs: HashMap<(String, String), MemberRun>,
    /// Set by [`Workers::stop_all`]: no worker starts after it, even from a
    /// reconcile that was mid-way when its task was aborted (an aborted task
    /// runs on to its next await).
    stopped: bool,
}

struct Worker {
    input: Arc<Mutex<Input>>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(federation: &str, member: &str) -> (String, String) {
    (federation.to_string(), member.to_string())
}

impl Workers {
    /// The registry, and the stream of federations whose status is to be
    /// aggregated because a worker finished (for `Controller::reconcile_on`).
    pub fn new() -> (
        Self,
        impl futures::Stream<Item = ObjectRef<MeshFederation>> + Send + 'static,
    ) {
        let (aggregate, events) = mpsc::unbounded_channel();
        let workers = Self {
            aggregate,
            state: Mutex::default(),
        };
        (workers, crate::connection::receiver_stream(events))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("workers lock")
    }

    /// Starts the member's worker, or hands it `input`; wakes it when the
    /// work changed or `resync` says so.
    pub fn ensure(self: &Arc<Self>, ctx: &Arc<MemberContext>, input: Input, resync: bool) {
        let k = key(&input.fed.name_any(), &input.member.name);
        let mut state = self.state();
        if state.stopped {
            return;
        }
        if let Some(worker) = state.workers.get(&k) {
            let mut current = worker.input.lock().expect("worker input lock");
            let changed = current.differs(&input);
            *current = input;
            if changed || resync {
                worker.wake.notify_one();
            }
            return;
        }
        let span = tracing::info_span!("member", federation = %k.0, member = %k.1);
        let input = Arc::new(Mutex::new(input));
        let wake = Arc::new(Notify::new());
        let host = Host {
            ctx: Arc::downgrade(ctx),
            workers: Arc::downgrade(self),
        };
        let task = tokio::spawn(work(host, input.clone(), wake.clone()).instrument(span));
        state.workers.insert(k, Worker { input, wake, task });
    }

    /// Stops every worker for good (each task is aborted when its entry
    /// drops): the process is stopping.
    pub fn stop_all(&self) {
        let mut state = self.state();
        state.stopped = true;
        state.workers.clear();
    }

    /// Wakes the member's worker.
    pub fn wake(&self, federation: &str, member: &str) {
        if let Some(w) = self.state().workers.get(&key(federation, member)) {
            w.wake.notify_one();
        }
    }

    /// Wakes every worker of `federation` but `except`'s.
    fn wake_peers(&self, federation: &str, except: &str) {
        for ((f, m), w) in &self.state().workers {
            if f == federation && m != except {
                w.wake.notify_one();
            }
        }
    }

    /// Stops the workers of `federation`'s members not in `members`, and
    /// forgets what they published.
    pub fn retain(&self, federation: &str, members: &BTreeSet<String>) {
        let mut state = self.state();
        let keep = |(f, m): &(String, String)| f != federation || members.contains(m);
        state.workers.retain(|k, _| keep(k));
        state.runs.retain(|k, _| keep(k));
        state.wanted.retain(keep);
        if let Some(facts) = state.facts.get_mut(federation) {
            facts.retain(|m, _| members.contains(m));
        }
    }

    /// A probe found the member's API server not answering: its last run's
    /// report says so at once, and the federation's status is aggregated,
    /// so that failover's grace period starts now rather than after the
    /// next full run (which, for a hung server, takes the member timeout).
    fn mark_unreachable(&self, federation: &str, member: &str, why: String) {
        let mut state = self.state();
        let Some(run) = state.runs.get_mut(&key(federation, member)) else {
            return;
        };
        run.report.unreachable = Some(why);
        run.report.contact = Contact::NoAnswer;
        run.report.status.reachable = false;
        drop(state);
        let _ = self
            .aggregate
            .send(ObjectRef::<MeshFederation>::new(federation));
    }

    /// What the members of `federation` published.
    pub fn facts(&self, federation: &str) -> BTreeMap<String, PeerFacts> {
        self.state()
            .facts
            .get(federation)
            .cloned()
            .unwrap_or_default()
    }

    /// What `member` of `federation` last published (defaults before that).
    fn facts_of(&self, federation: &str, member: &str) -> PeerFacts {
        self.state()
            .facts
            .get(federation)
            .and_then(|f| f.get(member))
            .cloned()
            .unwrap_or_default()
    }

    /// The report of `member`'s last finished run, if it had one.
    pub fn last_report(&self, federation: &str, member: &str) -> Option<MemberReport> {
        self.state()
            .runs
            .get(&key(federation, member))
            .map(|r| r.report.clone())
    }

    /// Whether `member` was reachable in its last finished run, if it had one.
    fn was_reachable(&self, federation: &str, member: &str) -> Option<bool> {
        self.state()
            .runs
            .get(&key(federation, member))
            .map(|r| r.report.status.reachable)
    }

    /// The last finished run of each worker of `federation`.
    pub fn runs(&self, federation: &str) -> BTreeMap<String, MemberRun> {
        self.state()
            .runs
            .iter()
            .filter(|((f, _), _)| f == federation)
            .map(|((_, m), run)| (m.clone(), run.clone()))
            .collect()
    }

    /// Publishes `member`'s facts; true when they changed. A worker stopped
    /// meanwhile publishes nothing.
    fn publish(&self, federation: &str, member: &str, facts: PeerFacts) -> bool {
        let mut state = self.state();
        if !state.workers.contains_key(&key(federation, member)) {
            return false;
        }
        let all = state.facts.entry(federation.into()).or_default();
        let changed = all.get(member) != Some(&facts);
        all.insert(member.into(), facts);
        changed
    }

    fn want_token(&self, federation: &str, member: &str) {
        self.state().wanted.insert(key(federation, member));
        self.wake(federation, member);
    }

    fn take_wanted(&self, federation: &str, member: &str) -> bool {
        self.state().wanted.remove(&key(federation, member))
    }

    fn record(&self, federation: &str, member: &str, run: MemberRun) {
        let k = key(federation, member);
        let mut state = self.state();
        if !state.workers.contains_key(&k) {
            return;
        }
        state.runs.insert(k, run);
        drop(state);
        let _ = self
            .aggregate
            .send(ObjectRef::<MeshFederation>::new(federation));
    }
}

/// The worker's loop: run, then sleep until woken, a deadline, or the
/// backoff after a failed run.
/// What a worker's task works with, held weakly: once the operator drops
/// them (it stops), the task ends.
struct Host {
    ctx: Weak<MemberContext>,
    workers: Weak<Workers>,
}

impl Host {
    fn upgrade(&self) -> Option<(Arc<MemberContext>, Arc<Workers>)> {
        Some((self.ctx.upgrade()?, self.workers.upgrade()?))
    }
}

async fn work(host: Host, input: Arc<Mutex<Input>>, wake: Arc<Notify>) {
    let mut failures = 0u32;
    let mut answered_last = true;
    loop {
        let Some((ctx, workers)) = host.upgrade() else {
            return;
        };
        let current = input.lock().expect("worker input lock").clone();
        if !ctx.federation_exists(&current.fed).await {
            // Deleted without its finalizer running (removed by hand).
            let federation = current.fed.name_any();
            workers.retain(&federation, &BTreeSet::new());
            ctx.watches.retain(&federation, &BTreeSet::new());
            return;
        }
        // With withdrawal on, the API server is probed during the run too: a
        // server that hangs mid-run (a run can spend several member
        // timeouts installing Istio) is reported at once and the run is
        // dropped, rather than holding failover until the run times out.
        // (Only while it is believed up: a member already reported
        // unreachable is reported so once.)
        let probe_every = current
            .fed
            .spec
            .withdrawal()
            .map(|p| p.probe_interval)
            .filter(|_| answered_last);
        let hung = async {
            match probe_every {
                Some(every) => probe_until_changed(&host, &current, true, every).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            outcome = run(&ctx, &workers, &current) => outcome,
            () = hung => Outcome {
                ready: false,
                answered: false,
                deadline: None,
            },
        };
        failures = if outcome.ready {
            0
        } else {
            (failures + 1).min(20)
        };
        let resync = ctx.settings.resync;
        let retry = if outcome.ready {
            resync
        } else {
            Duration::from_millis(500u64 << (failures - 1)).min(resync)
        };
        let wait = until_deadline(retry, outcome.deadline, Timestamp::now());
        // With withdrawal on, the API server is probed between runs, and a
        // change of reachability starts a run at once.
        let probe = current.fed.spec.withdrawal().map(|p| p.probe_interval);
        let answered = outcome.answered;
        answered_last = answered;
        drop((ctx, workers));
        let probe = async {
            match probe {
                Some(every) => probe_until_changed(&host, &current, answered, every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = probe => {}
        }
    }
}

/// Asks the member's API server for its version every `every` until the
/// answer disagrees with `answered` (whether it answered the last run). A
/// server that does not answer within `every` (or the member timeout, if
/// shorter) counts as not answering. It uses the connection the last run
/// built; credentials the operator cannot use are the runs' finding, not
/// the probe's.
async fn probe_until_changed(host: &Host, input: &Input, answered: bool, every: Duration) {
    let federation = input.fed.name_any();
    let member = &input.member;
    loop {
        tokio::time::sleep(every).await;
        let Some((ctx, workers)) = host.upgrade() else {
            return;
        };
        let Some(conn) = ctx.connections.cached(&member.credentials) else {
            continue;
        };
        let limit = every.min(ctx.settings.member_timeout);
        let answer = tokio::time::timeout(limit, conn.client.apiserver_version()).await;
        let now_answered = match &answer {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => api_server_answered(e),
            Err(_) => false,
        };
        if now_answered == answered {
            continue;
        }
        if !now_answered {
            let why = match answer {
                Ok(Err(e)) => format!("API server probe failed: {}", error_text(&e)),
                _ => format!("API server did not answer a probe within {limit:?}"),
            };
            let event = Event::new(
                Reason::MemberUnreachable,
                format!("member {}: {why}", member.name),
            );
            workers.mark_unreachable(&federation, &member.name, why);
            ctx.publish(&input.fed, vec![event]).await;
        }
        return;
    }
}

/// What a run came to, for the worker's schedule.
struct Outcome {
    ready: bool,
    /// Whether the member's API server answered (see [`MemberReport::contact`]).
    answered: bool,
    deadline: Option<Timestamp>,
}

/// One pass over one member: its own objects, its token for peers, the
/// remote secrets in it, its control plane, then its report.
async fn run(ctx: &MemberContext, workers: &Workers, input: &Input) -> Outcome {
    let fed = &input.fed;
    let now = Timestamp::now();
    let ca = fed.spec.ca();
    let policy = IntermediatePolicy {
        algorithm: ca.key_algorithm(),
        lifetime: ca.intermediate_lifetime(),
        renew_before: ca.renew_before(),
    };
    let tokens = TokenPolicy {
        lifetime: fed.spec.token_lifetime(),
        refresh: refresh_request(fed),
        departure: input.departure,
    };
    let mut prepared = prepare(ctx, workers, input, &policy, now).await;
    publish_facts(ctx, workers, input, &mut prepared, tokens, now).await;
    let saw_every_peer = {
        let published = workers.facts(&fed.name_any());
        fed.spec
            .members
            .iter()
            .all(|m| published.contains_key(&m.name))
    };
    sync_peers(ctx, workers, input, &mut prepared, tokens, now).await;
    sync_member_control_plane(ctx, fed, &input.member, &input.plan, &mut prepared).await;
    finish(ctx, workers, input, prepared, &policy, saw_every_peer).await
}

/// The run's first step ([`prepare_member`]), with what the member reached
/// of a root rotation kept while it cannot be reached (meshfed alone writes
/// its cacerts): it holds the next phase, not the one it finished.
async fn prepare(
    ctx: &MemberContext,
    workers: &Workers,
    input: &Input,
    policy: &IntermediatePolicy,
    now: Timestamp,
) -> PreparedMember {
    let (federation, member) = (input.fed.name_any(), &input.member);
    let previous = workers.last_report(&federation, &member.name);
    let step = Step {
        fed: &input.fed,
        member,
        ca: input.ca.as_deref(),
        policy,
        now,
        held_cluster: input.held_cluster.as_deref(),
        previous: previous.as_ref(),
    };
    let mut prepared = prepare_member(ctx, step).await;
    if prepared.report.unreachable.is_some() {
        prepared.report.ca_reached = previous.and_then(|r| r.ca_reached);
    }
    prepared
}

/// Publishes what peers need of this member (kept from the last run where
/// this one could not find out), with a token for them when one was asked
/// for. Tokens are minted only when a peer asks (asking wakes this worker
/// at once): not on a first run, so a restarted operator mints nothing
/// while every remote secret is current. A forced refresh mints at once.
async fn publish_facts(
    ctx: &MemberContext,
    workers: &Workers,
    input: &Input,
    prepared: &mut PreparedMember,
    tokens: TokenPolicy<'_>,
    now: Timestamp,
) {
    let (federation, member) = (input.fed.name_any(), &input.member.name);
    let previous = workers.facts_of(&federation, member);
    let reached = prepared.report.unreachable.is_none();
    let mut facts = PeerFacts {
        endpoint: prepared.endpoint.clone(),
        reader: if reached {
            prepared.reader.clone()
        } else {
            previous.reader.clone()
        },
        token: previous.token.clone(),
        refused: prepared.report.claim_problem.is_some(),
        cluster_id: prepared
            .report
            .status
            .cluster_id
            .clone()
            .or(previous.cluster_id.clone()),
        refreshed_for: previous.refreshed_for.clone(),
        holds: previous.holds.clone(),
    };
    let asked = workers.take_wanted(&federation, member);
    let refresh_pending = tokens
        .refresh
        .is_some_and(|r| facts.refreshed_for.as_deref() != Some(r));
    // A member left since the token was minted: it may hold a copy.
    let exposed = facts
        .token
        .as_ref()
        .is_some_and(|(_, t)| minted_before(t.departure, tokens.departure));
    if (asked || refresh_pending || exposed) && facts.usable_token(tokens, now).is_none() {
        let minted = mint_for_peers(ctx, input, prepared, &facts, tokens, refresh_pending).await;
        match minted {
            Some(token) => {
                facts.token = Some(token);
                facts.refreshed_for = tokens.refresh.map(String::from);
            }
            // Asked again once it can mint.
            None => {
                workers.state().wanted.insert(key(&federation, member));
            }
        }
    }
    if workers.publish(&federation, member, facts) {
        workers.wake_peers(&federation, member);
    }
}

/// A token of this member's reader for its peers, when the member can be
/// reached and its reader is meshfed's; otherwise why not, in the report.
async fn mint_for_peers(
    ctx: &MemberContext,
    input: &Input,
    prepared: &mut PreparedMember,
    facts: &PeerFacts,
    tokens: TokenPolicy<'_>,
    refresh_pending: bool,
) -> Option<(TokenSubject, IssuedToken)> {
    let (federation, member) = (input.fed.name_any(), &input.member.name);
    let (Some(conn), Ok(reader)) = (&prepared.connection, &facts.reader) else {
        return None;
    };
    let timeout = ctx.settings.member_timeout;
    let minted = tokio::time::timeout(
        timeout,
        mint_token(&conn.client, &federation, &reader.service_account, tokens),
    )
    .await;
    let why = match minted {
        Ok(Ok(token)) => {
            ctx.metrics.token_minted(&federation, member);
            if let (true, Some(request)) = (refresh_pending, tokens.refresh) {
                prepared.events.push(Event::new(
                    Reason::TokenRefreshed,
                    format!(
                        "member {member}: a new reader token for peers ({}={request}); the old ones are revoked once every peer holds the new one",
                        keys::REFRESH_TOKENS
                    ),
                ));
            }
            return Some((reader.clone(), token));
        }
        Ok(Err(e)) => error_text(&e),
        Err(_) => format!(
            "no answer within {timeout:?} (retried next reconcile; if it persists, the member's API server is overloaded or the path to it is slow)"
        ),
    };
    prepared
        .report
        .other_problems
        .push(format!("minting a token for peers: {why}"));
    None
}

/// The remote secrets in this member for every peer in the spec (published
/// or not yet) but the withdrawn ones, whose secrets go (failover); then
/// what it holds of theirs is published, so that they can revoke what
/// nobody holds any more, and this member's replaced tokens are revoked.
async fn sync_peers(
    ctx: &MemberContext,
    workers: &Workers,
    input: &Input,
    prepared: &mut PreparedMember,
    tokens: TokenPolicy<'_>,
    now: Timestamp,
) {
    let Some(conn) = prepared.connection.clone() else {
        return;
    };
    let (fed, member) = (&input.fed, &input.member.name);
    let federation = fed.name_any();
    let published = workers.facts(&federation);
    let peers: BTreeMap<String, PeerFacts> = fed
        .spec
        .members
        .iter()
        .filter(|m| !input.withdrawn.contains(&m.name))
        .map(|m| {
            let facts = published.get(&m.name).cloned().unwrap_or_default();
            (m.name.clone(), facts)
        })
        .collect();
    let plan = remote_secrets::plan_remote_secrets(&federation, prepared, &peers, tokens, now);
    for peer in plan.needs_tokens() {
        workers.want_token(&federation, peer);
    }
    let timeout = ctx.settings.member_timeout;
    let held =
        remote_secrets::sync_remote_secrets(&federation, prepared, &plan, &peers, tokens, timeout)
            .await;
    let mut facts = workers.facts_of(&federation, member);
    facts.holds = Some(held);
    if workers.publish(&federation, member, facts) {
        workers.wake_peers(&federation, member);
    }
    revoke_tokens(workers, fed, input.departure, prepared, &conn.client).await;
    ctx.watches
        .ensure(&federation, member, &conn, fed.spec.control_plane.is_some());
}

/// Publishes the run's Events and metrics and records its report; what it
/// came to, for the worker's schedule.
async fn finish(
    ctx: &MemberContext,
    workers: &Workers,
    input: &Input,
    mut prepared: PreparedMember,
    policy: &IntermediatePolicy,
    saw_every_peer: bool,
) -> Outcome {
    let (fed, member) = (&input.fed, &input.member.name);
    let federation = fed.name_any();
    let last = workers.was_reachable(&federation, member);
    let mut events = std::mem::take(&mut prepared.events);
    events.extend(reachability_event(last, &prepared.report));
    ctx.publish(fed, events).await;

    let requests = prepared
        .connection
        .as_ref()
        .map(|c| c.requests.snapshot().since(prepared.request_baseline));
    let outcome = Outcome {
        ready: prepared.report.is_ready(),
        answered: prepared.report.contact != Contact::NoAnswer,
        deadline: next_deadline(&prepared.report, policy.renew_before),
    };
    ctx.metrics.member_run(
        &federation,
        member,
        outcome.ready,
        requests.unwrap_or_default(),
    );
    tracing::debug!(ready = outcome.ready, requests = ?requests, "member reconciled");
    workers.record(
        &federation,
        member,
        MemberRun {
            report: prepared.report,
            generation: fed.metadata.generation,
            requests,
            saw_every_peer,
        },
    );
    outcome
}

/// Deletes the Secrets that tokens of this member's reader are bound to,
/// revoking them: at once for a token a departed member may hold
/// ([`held_by_departed`]); for a replaced one, once no member may still
/// use it ([`revocable`]). What each member holds comes from what it
/// published; one not heard from since the operator started may hold
/// anything, so no replaced token but an expired one is revoked until it is.
async fn revoke_tokens(
    workers: &Workers,
    fed: &MeshFederation,
    departure: Option<i64>,
    prepared: &mut PreparedMember,
    client: &kube::Client,
) {
    let federation = fed.name_any();
    let member = prepared.name.clone();
    let facts = workers.facts(&federation);
    let current = facts
        .get(&member)
        .and_then(|f| f.token.as_ref())
        .map(|(_, t)| t.binding.clone());
    if current.is_none() && departure.is_none() {
        return;
    }
    let holders: Vec<_> = fed
        .spec
        .members
        .iter()
        .filter(|m| m.name != member)
        .map(|m| facts.get(&m.name).filter(|f| !f.refused))
        .map(|f| {
            f.and_then(|f| f.holds.as_ref())
                .map(|h| h.get(&member).cloned())
        })
        .collect();
    let secrets = Api::<Secret>::namespaced(client.clone(), ISTIO_NAMESPACE);
    let selector = format!("{}={}", keys::TOKEN_BINDING, reader_name(&federation));
    let listed = match secrets.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(e) => {
            let why = error_text(&e);
            prepared
                .report
                .other_problems
                .push(format!("listing the reader's token bindings: {why}"));
            return;
        }
    };
    let bindings: Vec<Binding> = listed
        .iter()
        .filter(|s| crate::render::is_ours(&s.metadata, &federation))
        .map(Binding::of)
        .collect();
    let exposed = held_by_departed(&bindings, current.as_deref(), departure);
    // Replaced tokens wait for every holder to switch; with no current token
    // (a restarted operator that has not minted yet) nothing is replaced.
    let (replaced, next) = match &current {
        Some(current) => revocable(
            &bindings,
            Some(current),
            &holders,
            fed.spec.revoke_after(),
            Timestamp::now(),
        ),
        None => (Vec::new(), None),
    };
    prepared.report.next_revocation = next;
    let revoke = exposed
        .iter()
        .map(|name| (name, "a reader token a departed member may hold"))
        .chain(
            replaced
                .iter()
                .filter(|name| !exposed.contains(name))
                .map(|name| (name, "a replaced reader token")),
        );
    for (name, what) in revoke {
        match delete(&secrets, name).await {
            Ok(true) => prepared.events.push(Event::new(
                Reason::TokenRevoked,
                format!("member {member}: revoked {what} (deleted {ISTIO_NAMESPACE}/{name}, which it was bound to)"),
            )),
            Ok(false) => {}
            Err(e) => prepared.report.other_problems.push(format!(
                "revoking the token bound to {name}: {}",
                error_text(&e)
            )),
        }
    }
}

/// An Event when the member became unreachable or reachable again.
fn reachability_event(was_reachable: Option<bool>, report: &MemberReport) -> Option<Event> {
    let name = &report.status.name;
    match (was_reachable, report.unreachable.as_ref()) {
        (Some(true) | None, Some(why)) => Some(Event::new(
            Reason::MemberUnreachable,
            format!("member {name}: {why}"),
        )),
        (Some(false), None) => Some(Event::new(
            Reason::MemberRecovered,
            format!("member {name} is reachable again"),
        )),
        _ => None,
    }
}

/// The earliest moment something in the member must be renewed: a remote
/// secret's token due for refresh, or its intermediate's renewal window.
fn next_deadline(report: &MemberReport, renew_before: Duration) -> Option<Timestamp> {
    let renew_before = jiff::SignedDuration::try_from(renew_before).unwrap_or_default();
    let renewal = report
        .status
        .intermediate
        .as_ref()
        .and_then(|i| i.not_after.0.checked_sub(renew_before).ok());
    report
        .next_token_refresh
        .into_iter()
        .chain(report.next_revocation)
        .chain(renewal)
        .min()
}

/// The wait before the next run: `regular`, or sooner when a deadline comes
/// first (at least a second later, so that a deadline already passed cannot
/// spin).
fn until_deadline(regular: Duration, deadline: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(deadline) = deadline else {
        return regular;
    };
    let wait = Duration::try_from(deadline.duration_since(now)).unwrap_or_default();
    regular.min(wait.max(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CertificateStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_nearest_token_refresh_or_renewal_is_the_deadline() {
        let renew_before = Duration::from_secs(30 * 24 * 3600);
        let mut r = MemberReport::new("a");
        assert_eq!(next_deadline(&r, renew_before), None);
        r.next_token_refresh = Some(t("2026-01-01T05:00:00Z"));
        assert_eq!(
            next_deadline(&r, renew_before),
            Some(t("2026-01-01T05:00:00Z"))
        );
        r.status.intermediate = Some(CertificateStatus {
            serial: "1".into(),
            not_after: Time(t("2026-01-31T00:00:00Z")),
        });
        assert_eq!(
            next_deadline(&r, renew_before),
            Some(t("2026-01-01T00:00:00Z")),
            "the intermediate enters its renewal window first"
        );
    }

    #[test]
    fn a_deadline_before_the_regular_wait_brings_the_run_forward() {
        let now = t("2026-01-01T00:00:00Z");
        let resync = 30 * MINUTE;
        assert_eq!(until_deadline(resync, None, now), resync);
        assert_eq!(
            until_deadline(resync, Some(t("2026-01-01T00:10:00Z")), now),
            10 * MINUTE
        );
        assert_eq!(
            until_deadline(resync, Some(t("2026-01-01T02:00:00Z")), now),
            resync
        );
        assert_eq!(
            until_deadline(resync, Some(t("2025-12-31T00:00:00Z")), now),
            Duration::from_secs(1),
            "a passed deadline never spins"
        );
    }

    #[test]
    fn reachability_changes_are_events_and_steady_states_are_not() {
        let down = MemberReport {
            unreachable: Some("connection refused".into()),
            ..MemberReport::new("a")
        };
        let up = MemberReport::new("a");
        assert_eq!(
            reachability_event(Some(true), &down).map(|e| e.reason),
            Some(Reason::MemberUnreachable)
        );
        assert_eq!(
            reachability_event(None, &down).map(|e| e.reason),
            Some(Reason::MemberUnreachable)
        );
        assert_eq!(
            reachability_event(Some(false), &up).map(|e| e.reason),
            Some(Reason::MemberRecovered)
        );
        assert!(reachability_event(Some(false), &down).is_none());
        assert!(reachability_event(Some(true), &up).is_none());
    }
}
