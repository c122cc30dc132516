//! HTTP front end: authentication, authorization, fault injection, request log and the
//! REST verbs over the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::errors::{ApiError, FieldError, FieldErrorKind};
use crate::rbac::{self, Attributes, User};
use crate::registry::ResourceType;
use crate::store::{Event, Key, State, now};
use crate::table::{self, IncludeObject};
use crate::{ErrorFault, RequestRecord, discovery, patch, schema, ssa};

pub(crate) struct Sim {
    pub state: Mutex<State>,
    pub tx: broadcast::Sender<Arc<Event>>,
    pub rbac: bool,
    pub bookmark_interval: Duration,
    pub admin_token: String,
    pub log: Mutex<Vec<RequestRecord>>,
    pub faults: Mutex<FaultState>,
    pub drop_watches: tokio::sync::watch::Sender<u64>,
    pub addr: Mutex<String>,
}

#[derive(Default, Clone)]
pub(crate) struct FaultState {
    pub latency: Duration,
    pub errors: Vec<ErrorFault>,
}

impl Sim {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Query = HashMap<String, String>;

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> Query {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn json_response(code: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response {
    let mut r = json_response(e.code, &e.status());
    if e.code == 429 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// A parsed resource path.
#[derive(Debug, Clone, Default)]
struct ResPath {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Resource(ResPath),
    /// `/api/v1` or `/apis/g/v`
    GroupVersion(String, String),
    /// `/apis/g`
    Group(String),
    Other,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => return Route::Group(g.to_string()),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Other,
    };
    let mut p = ResPath {
        group: group.into(),
        version: version.into(),
        ..Default::default()
    };
    let rest: Vec<&str> = rest.to_vec();
    let rest = match rest.as_slice() {
        [] => return Route::GroupVersion(group.into(), version.into()),
        ["namespaces", ns, r, more @ ..]
            if !(more.is_empty() && (*r == "status" || *r == "finalize")) =>
        {
            p.namespace = Some(ns.to_string());
            let mut v = vec![*r];
            v.extend_from_slice(more);
            v
        }
        other => other.to_vec(),
    };
    match rest.as_slice() {
        [r] => p.plural = r.to_string(),
        [r, n] => {
            p.plural = r.to_string();
            p.name = Some(n.to_string());
        }
        [r, n, s] => {
            p.plural = r.to_string();
            p.name = Some(n.to_string());
            p.sub = Some(s.to_string());
        }
        _ => return Route::Other,
    }
    Route::Resource(p)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

fn accept(headers: &HeaderMap) -> String {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1` (kube-rs
/// `get_metadata`/`list_metadata`/`metadata_watcher`, client-go metadata informers).
fn wants_metadata(headers: &HeaderMap) -> bool {
    accept(headers)
        .split(',')
        .next()
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

fn wants_table(headers: &HeaderMap) -> bool {
    accept(headers)
        .split(',')
        .next()
        .is_some_and(|a| a.contains("as=Table"))
}

/// Per-request context for the REST handlers.
struct Ctx<'a> {
    sim: &'a Sim,
    t: ResourceType,
    p: ResPath,
    q: Query,
    headers: HeaderMap,
    warnings: Vec<String>,
    user: User,
    attrs: Attributes,
}

impl Ctx<'_> {
    /// A PATCH that would create the object must also be allowed to `create` it (as the API
    /// server's patch handler authorises `createAuthorizerAttributes` before storing an object a
    /// patch creates). The request itself stays a `patch` in the request log.
    fn authorize_create(&self) -> Result<(), ApiError> {
        if !self.sim.rbac {
            return Ok(());
        }
        let mut a = self.attrs.clone();
        a.verb = "create".into();
        if !self.t.namespaced {
            // The handler's namespace, not RequestInfo's (which is the name for namespaces).
            a.namespace = String::new();
        }
        if rbac::allowed(&self.sim.state().objects, &self.user, &a) {
            return Ok(());
        }
        let why = rbac::forbidden_message(&self.user, &a);
        Err(ApiError::forbidden(&a.group, &a.resource, &a.name, &why))
    }
    fn ns(&self) -> &str {
        self.p.namespace.as_deref().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.p.name.as_deref().unwrap_or_default()
    }
    fn sub(&self) -> &str {
        self.p.sub.as_deref().unwrap_or_default()
    }
    fn key(&self, name: &str) -> Key {
        (
            self.t.storage_group.clone(),
            self.t.plural.clone(),
            if self.t.namespaced {
                self.ns().to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }
    fn dry_run(&self) -> bool {
        self.q.get("dryRun").is_some_and(|v| v == "All")
    }
    /// The field manager: `fieldManager`, else the user agent's product name, as the API server
    /// derives it.
    fn manager(&self) -> String {
        if let Some(m) = self.q.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.clone();
        }
        let ua = self
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    }
    fn err(&self, e: ApiError) -> Response {
        error_response(&e)
    }
    fn respond(&self, code: u16, body: &Value) -> Response {
        let mut r = json_response(code, body);
        for w in &self.warnings {
            let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
            if let Ok(v) = HeaderValue::from_str(&text) {
                r.headers_mut().append("Warning", v);
            }
        }
        r
    }
    /// The object as served at the requested version.
    fn present(&self, obj: &Value) -> Value {
        if self.t.group == "events.k8s.io" {
            self.typed(core_to_events(obj))
        } else {
            self.typed(obj.clone())
        }
    }
    /// As `present`, for a copy already made (a list's items): no second copy.
    fn present_owned(&self, obj: Value) -> Value {
        if self.t.group == "events.k8s.io" {
            self.typed(core_to_events(&obj))
        } else {
            self.typed(obj)
        }
    }
    fn typed(&self, mut o: Value) -> Value {
        o["apiVersion"] = json!(self.t.api_version());
        o["kind"] = json!(self.t.kind);
        o
    }
    fn ingest(&self, obj: Value) -> Value {
        let mut o = if self.t.group == "events.k8s.io" {
            events_to_core(&obj)
        } else {
            obj
        };
        if self.t.group == "events.k8s.io" {
            o["apiVersion"] = json!("v1");
        } else {
            o["apiVersion"] = json!(self.t.api_version());
        }
        o["kind"] = json!(self.t.kind);
        o
    }
}

const EVENT_PAIRS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("count", "deprecatedCount"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("reportingComponent", "reportingController"),
];

fn core_to_events(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for (core, ev) in EVENT_PAIRS {
            if let Some(v) = m.remove(*core) {
                m.insert(ev.to_string(), v);
            }
        }
        if let Some(src) = m.remove("source") {
            m.insert("deprecatedSource".into(), src);
        }
    }
    o
}

fn events_to_core(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for (core, ev) in EVENT_PAIRS {
            if let Some(v) = m.remove(*ev) {
                m.insert(core.to_string(), v);
            }
        }
        if let Some(src) = m.remove("deprecatedSource") {
            m.insert("source".into(), src);
        }
        if !m.contains_key("source") {
            let component = m.get("reportingComponent").cloned().unwrap_or(Value::Null);
            let host = m.get("reportingInstance").cloned().unwrap_or(Value::Null);
            m.insert(
                "source".into(),
                json!({"component": component, "host": host}),
            );
        }
    }
    o
}

pub(crate) async fn handle(AxState(sim): AxState<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let q = parse_query(parts.uri.query());
    let headers = parts.headers.clone();
    let method = parts.method.clone();
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let token = bearer(&headers);
    let user = token.as_deref().and_then(|t| {
        if t == sim.admin_token {
            Some(User {
                name: "kube-sim-admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
            })
        } else {
            sim.state().tokens.get(t).cloned()
        }
    });
    // Impersonation (`kubectl --as`): allowed to system:masters only.
    let impersonated = headers
        .get("Impersonate-User")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let user = match (impersonated, user) {
        (Some(name), Some(u)) if u.groups.iter().any(|g| g == "system:masters") => {
            let mut groups: Vec<String> = headers
                .get_all("Impersonate-Group")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            if let Some((ns, sa)) = name
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'))
            {
                for g in User::service_account(ns, sa).groups {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
            if !groups.iter().any(|g| g == "system:authenticated") {
                groups.push("system:authenticated".into());
            }
            Some(User { name, groups })
        }
        (Some(name), Some(u)) => {
            let why = format!(
                "User {:?} cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
                u.name
            );
            return error_response(&ApiError::forbidden("", "users", &name, &why));
        }
        (_, u) => u,
    };
    if path.starts_with("/_sim/") {
        let is_admin = user.as_ref().is_some_and(|u| u.name == "kube-sim-admin");
        if !is_admin {
            return error_response(&ApiError::unauthorized());
        }
        let bytes = axum::body::to_bytes(body, 16 << 20)
            .await
            .unwrap_or_default();
        return sim_endpoint(&sim, &method, &path, &bytes);
    }
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        let mut r = Response::new(Body::from("ok"));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    }
    let r = route(&path);
    let mut attrs = Attributes {
        verb: method.as_str().to_lowercase(),
        group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
    };
    if let Route::Resource(p) = &r {
        let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
        attrs.verb = match (method.clone(), p.name.is_some()) {
            (Method::GET, _) if watch => "watch".into(),
            (Method::GET, true) => "get".into(),
            (Method::GET, false) => "list".into(),
            (Method::POST, _) => "create".into(),
            (Method::PUT, _) => "update".into(),
            (Method::PATCH, _) => "patch".into(),
            (Method::DELETE, true) => "delete".into(),
            (Method::DELETE, false) => "deletecollection".into(),
            (m, _) => m.as_str().to_lowercase(),
        };
        attrs.group = p.group.clone();
        attrs.resource = p.plural.clone();
        attrs.subresource = p.sub.clone().unwrap_or_default();
        attrs.namespace = p.namespace.clone().unwrap_or_default();
        if p.plural == "namespaces" && p.namespace.is_none() {
            attrs.namespace = p.name.clone().unwrap_or_default();
        }
        attrs.name = p.name.clone().unwrap_or_default();
        // As the API server's RequestInfo: list/watch of one object by field selector carries
        // its name, so RBAC `resourceNames` rules apply.
        if attrs.name.is_empty() && (attrs.verb == "list" || attrs.verb == "watch") {
            let fs = q
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default();
            let names: Vec<&str> = fs
                .split(',')
                .filter_map(|part| part.strip_prefix("metadata.name=="))
                .chain(fs.split(',').filter_map(|part| {
                    part.strip_prefix("metadata.name=")
                        .filter(|v| !v.starts_with('='))
                }))
                .collect();
            if let [name] = names.as_slice() {
                attrs.name = name.to_string();
            }
        }
    }
    let response = dispatch(
        &sim,
        r,
        &path,
        q,
        headers,
        method.clone(),
        body,
        user.clone(),
        &attrs,
    )
    .await;
    let record = RequestRecord {
        method: method.to_string(),
        path,
        verb: attrs.verb,
        api_group: attrs.group,
        resource: attrs.resource,
        subresource: attrs.subresource,
        namespace: attrs.namespace,
        name: attrs.name,
        user: user.map(|u| u.name).unwrap_or_default(),
        code: response.status().as_u16(),
        time: now(),
        user_agent,
    };
    sim.log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(record);
    response
}

fn sim_endpoint(sim: &Sim, method: &Method, path: &str, body: &[u8]) -> Response {
    match (method.clone(), path) {
        (Method::GET, "/_sim/requests") => {
            let log = sim.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
            json_response(200, &serde_json::to_value(log).unwrap_or_default())
        }
        (Method::DELETE, "/_sim/requests") => {
            sim.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
            json_response(200, &json!({}))
        }
        (Method::POST, "/_sim/faults") => match serde_json::from_slice::<crate::FaultRequest>(body)
        {
            Ok(fr) => {
                crate::apply_fault_request(sim, fr);
                json_response(200, &crate::fault_summary(sim))
            }
            Err(e) => error_response(&ApiError::bad_request(format!(
                "invalid fault request: {e}"
            ))),
        },
        (Method::GET, "/_sim/faults") => json_response(200, &crate::fault_summary(sim)),
        _ => error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
    .with_details(json!({}))
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    sim: &Arc<Sim>,
    r: Route,
    path: &str,
    q: Query,
    headers: HeaderMap,
    method: Method,
    body: Body,
    user: Option<User>,
    attrs: &Attributes,
) -> Response {
    if path == "/version" {
        return json_response(200, &version());
    }
    let Some(user) = user else {
        return error_response(&ApiError::unauthorized());
    };
    // Fault injection: latency, then forced errors.
    let (latency, forced) = {
        let mut f = sim.faults.lock().unwrap_or_else(|e| e.into_inner());
        let mut forced = None;
        if !attrs.resource.is_empty()
            && let Some(i) = f.errors.iter().position(|e| e.matches(attrs, &user.name))
        {
            let e = f.errors[i].clone();
            if let Some(times) = f.errors[i].times.as_mut() {
                *times = times.saturating_sub(1);
                if *times == 0 {
                    f.errors.remove(i);
                }
            }
            forced = Some(e);
        }
        (f.latency, forced)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(e) = forced {
        return error_response(&e.to_error(attrs));
    }
    let p = match r {
        Route::Resource(p) => p,
        Route::Group(g) => {
            let st = sim.state();
            return match discovery::api_group(&st.types, &g) {
                Some(v) => json_response(200, &v),
                None => error_response(&not_found_path()),
            };
        }
        Route::GroupVersion(g, v) => {
            let st = sim.state();
            return match discovery::resource_list(&st.types, &g, &v) {
                Some(doc) => json_response(200, &doc),
                None => error_response(&not_found_path()),
            };
        }
        Route::Other => return non_resource(sim, path, &headers),
    };
    // Every authenticated user may review its own access (system:basic-user).
    if p.group == "authorization.k8s.io"
        && p.plural == "selfsubjectaccessreviews"
        && method == Method::POST
    {
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        return match parse_body(&bytes, &headers) {
            Ok(review) => json_response(201, &self_subject_access_review(sim, &user, review)),
            Err(e) => error_response(&e),
        };
    }
    if sim.rbac {
        let st = sim.state();
        if !rbac::allowed(&st.objects, &user, attrs) {
            let why = rbac::forbidden_message(&user, attrs);
            return error_response(&ApiError::forbidden(
                &attrs.group,
                &attrs.resource,
                &attrs.name,
                &why,
            ));
        }
    }
    let Some(t) = sim.state().find_type(&p.group, &p.version, &p.plural) else {
        return error_response(&not_found_path());
    };
    if !t.namespaced && p.namespace.is_some() {
        return error_response(&not_found_path());
    }
    if let Some(s) = &p.sub {
        let ok = (s == "status" && t.status_subresource)
            || (s == "token" && t.plural == "serviceaccounts" && method == Method::POST);
        if !ok {
            return error_response(&not_found_path());
        }
    }
    let bytes = if method == Method::GET {
        Default::default()
    } else {
        match axum::body::to_bytes(body, 64 << 20).await {
            Ok(b) => b,
            Err(e) => return error_response(&ApiError::bad_request(e.to_string())),
        }
    };
    let mut ctx = Ctx {
        sim,
        t,
        p,
        q,
        headers,
        warnings: Vec::new(),
        user,
        attrs: attrs.clone(),
    };
    let watch = ctx.q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let result = match (method, ctx.p.name.is_some()) {
        (Method::GET, _) if watch => return watch_handler(sim.clone(), ctx),
        (Method::GET, true) => get(&ctx),
        (Method::GET, false) => list(&ctx),
        (Method::POST, false) => create(&mut ctx, &bytes),
        (Method::POST, true) if ctx.sub() == "token" => token_request(&ctx, &bytes),
        (Method::PUT, true) => update(&mut ctx, &bytes),
        (Method::PATCH, true) => patch_retrying(&mut ctx, &bytes),
        (Method::DELETE, true) => delete(&ctx, &bytes),
        (Method::DELETE, false) => delete_collection(&ctx, &bytes),
        (m, _) => Err(ApiError::method_not_supported(
            &ctx.t.group,
            &ctx.t.plural,
            m.as_str(),
        )),
    };
    match result {
        Ok((code, v)) => {
            // Writes answer metadata only when asked (kube-rs `patch_metadata`).
            let plain = v["metadata"].is_object()
                && !matches!(
                    v["kind"].as_str(),
                    Some(
                        "Status" | "PartialObjectMetadata" | "PartialObjectMetadataList" | "Table"
                    )
                );
            let is_list = v["kind"].as_str().is_some_and(|k| k.ends_with("List"));
            if wants_metadata(&ctx.headers) && plain && !is_list {
                ctx.respond(code, &partial_metadata(&v))
            } else {
                ctx.respond(code, &v)
            }
        }
        Err(e) => ctx.err(e),
    }
}

/// `SelfSubjectAccessReview` (what `kubectl auth can-i` asks).
fn self_subject_access_review(sim: &Sim, user: &User, mut review: Value) -> Value {
    let ra = &review["spec"]["resourceAttributes"];
    let allowed = if ra.is_object() {
        let attrs = Attributes {
            verb: ra["verb"].as_str().unwrap_or_default().to_string(),
            group: ra["group"].as_str().unwrap_or_default().to_string(),
            resource: ra["resource"].as_str().unwrap_or_default().to_string(),
            subresource: ra["subresource"].as_str().unwrap_or_default().to_string(),
            namespace: ra["namespace"].as_str().unwrap_or_default().to_string(),
            name: ra["name"].as_str().unwrap_or_default().to_string(),
        };
        !sim.rbac || rbac::allowed(&sim.state().objects, user, &attrs)
    } else {
        true
    };
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    review["metadata"] = json!({"creationTimestamp": null});
    review["status"] = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by kube-sim"})
    } else {
        json!({"allowed": false})
    };
    review
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-sim", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": "33",
    })
}

fn non_resource(sim: &Sim, path: &str, headers: &HeaderMap) -> Response {
    let st = sim.state();
    let acc = accept(headers);
    let aggregated = acc
        .split(',')
        .find(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("g=apidiscovery.k8s.io"))
        .map(|a| {
            if a.contains("v=v2beta1") {
                "v2beta1"
            } else {
                "v2"
            }
        });
    match path.trim_end_matches('/') {
        "/api" | "/apis" => {
            if let Some(v) = aggregated {
                let doc = discovery::aggregated(
                    &st.types,
                    path.trim_end_matches('/') == "/api",
                    &format!("apidiscovery.k8s.io/{v}"),
                );
                let mut r = json_response(200, &doc);
                let ct = format!(
                    "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
                );
                if let Ok(hv) = HeaderValue::from_str(&ct) {
                    r.headers_mut().insert(header::CONTENT_TYPE, hv);
                }
                return r;
            }
            if path.trim_end_matches('/') == "/api" {
                json_response(
                    200,
                    &discovery::api_versions(&sim.addr.lock().unwrap_or_else(|e| e.into_inner())),
                )
            } else {
                json_response(200, &discovery::api_group_list(&st.types))
            }
        }
        "/openapi/v2" => match discovery::openapi_v2_media_type(&acc) {
            Some(ct) => {
                let (body, hash) = if ct == "application/json" {
                    let b = serde_json::to_vec(&discovery::openapi_v2_json()).unwrap_or_default();
                    (b, "json")
                } else {
                    (discovery::openapi_v2_proto(), "proto")
                };
                let mut r = Response::new(Body::from(body));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
                r.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Accept"));
                if let Ok(hv) = HeaderValue::from_str(&format!("\"kube-sim-openapi-v2-{hash}\"")) {
                    r.headers_mut().insert(header::ETAG, hv);
                }
                r
            }
            None => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NOT_ACCEPTABLE;
                r.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Accept"));
                r
            }
        },
        "/openapi/v3" => json_response(
            200,
            &discovery::openapi_v3_index(
                &st.types,
                &format!("{:016X}", st.types.len() as u64 * 7919 + st.rv),
            ),
        ),
        p if p.starts_with("/openapi/v3/") => {
            let rest: Vec<&str> = p.trim_start_matches("/openapi/v3/").split('/').collect();
            let doc = match rest.as_slice() {
                ["api", v] => discovery::openapi_v3_gv(&st.types, "", v),
                ["apis", g, v] => discovery::openapi_v3_gv(&st.types, g, v),
                _ => None,
            };
            match doc {
                Some(d) => json_response(200, &d),
                None => error_response(&not_found_path()),
            }
        }
        _ => error_response(&not_found_path()),
    }
}

// ---------- reads ----------

fn include_object(q: &Query) -> IncludeObject {
    match q.get("includeObject").map(String::as_str) {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

fn get(ctx: &Ctx) -> Result<(u16, Value), ApiError> {
    let st = ctx.sim.state();
    let obj = st
        .objects
        .get(&ctx.key(ctx.name()))
        .ok_or_else(|| ApiError::not_found(&ctx.t.group, &ctx.t.plural, ctx.name()))?;
    let obj = ctx.present(obj);
    if wants_table(&ctx.headers) {
        let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
        return Ok((
            200,
            table::table(&ctx.t, &[obj], include_object(&ctx.q), meta, true),
        ));
    }
    if wants_metadata(&ctx.headers) {
        return Ok((200, partial_metadata(&obj)));
    }
    Ok((200, obj))
}

struct Filter {
    labels: crate::selectors::LabelSelector,
    fields: crate::selectors::FieldSelector,
}

impl Filter {
    fn from(q: &Query) -> Result<Self, ApiError> {
        Ok(Self {
            labels: crate::selectors::LabelSelector::parse(
                q.get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )?,
            fields: crate::selectors::FieldSelector::parse(
                q.get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )?,
        })
    }
    fn matches(&self, presented: &Value) -> bool {
        self.labels.matches(&presented["metadata"]["labels"]) && self.fields.matches(presented)
    }
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(400, "BadRequest", format!("invalid resource version: {s}"))
            .with_details(json!({}))
    })
}

fn too_large(rv: u64, current: u64) -> ApiError {
    ApiError::new(504, "Timeout", format!("Too large resource version: {rv}, current: {current}"))
        .with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}))
}

fn too_old(rv: u64, compacted: u64) -> ApiError {
    ApiError::gone(format!("too old resource version: {rv} ({compacted})"))
}

fn list(ctx: &Ctx) -> Result<(u16, Value), ApiError> {
    let filter = Filter::from(&ctx.q)?;
    let st = ctx.sim.state();
    let ns = if ctx.t.namespaced {
        ctx.p.namespace.as_deref()
    } else {
        None
    };
    let limit = ctx
        .q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    // Selectors are matched on the object as presented; only events are stored in another
    // shape, so the others are matched as stored, without a copy.
    let events = ctx.t.group == "events.k8s.io";
    let keep = |o: &Value| {
        if events {
            filter.matches(&ctx.present(o))
        } else {
            filter.matches(o)
        }
    };
    let scope = crate::store::Scope {
        label: filter.labels.equality(),
        ..crate::store::Scope::of(&ctx.t.storage_group, &ctx.t.plural, ns)
    };
    // remainingItemCount is given for an unfiltered list only, as the real server does; a
    // filtered one only needs to know whether there is more.
    let count_rest = filter.labels.is_empty() && filter.fields.is_empty();
    let mut list_rv = st.rv;
    let (items, remaining) = if let Some(token) = ctx.q.get("continue").filter(|c| !c.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: illegal base64 data")
            })?;
        list_rv = decoded["rv"].as_u64().unwrap_or(st.rv);
        let after = (
            decoded["ns"].as_str().unwrap_or_default(),
            decoded["name"].as_str().unwrap_or_default(),
        );
        st.page(&scope, Some(list_rv), Some(after), keep, limit, count_rest).ok_or_else(|| {
            ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
        })?
    } else {
        let rv = ctx.q.get("resourceVersion").filter(|v| !v.is_empty());
        let at = match (rv, ctx.q.get("resourceVersionMatch").map(String::as_str)) {
            (Some(rv), Some("Exact")) => {
                let n = parse_rv(rv)?;
                if n > st.rv {
                    return Err(too_large(n, st.rv));
                }
                list_rv = n;
                Some(n)
            }
            (Some(rv), _) => {
                let n = parse_rv(rv)?;
                if n > st.rv {
                    return Err(too_large(n, st.rv));
                }
                None
            }
            (None, Some(m)) if !m.is_empty() => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            _ => None,
        };
        st.page(&scope, at, None, keep, limit, count_rest)
            .ok_or_else(|| too_old(at.unwrap_or_default(), st.compacted))?
    };
    drop(st);
    let next = items.last().map(|(k, _)| (k.2.clone(), k.3.clone()));
    let out: Vec<Value> = items
        .into_iter()
        .map(|(_, obj)| ctx.present_owned(obj))
        .collect();
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if remaining > 0
        && let Some((ns, name)) = next
    {
        let token = json!({"rv": list_rv, "ns": ns, "name": name});
        meta["continue"] =
            json!(base64::engine::general_purpose::STANDARD.encode(token.to_string()));
        if count_rest {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    if wants_table(&ctx.headers) {
        return Ok((
            200,
            table::table(&ctx.t, &out, include_object(&ctx.q), meta, true),
        ));
    }
    if wants_metadata(&ctx.headers) {
        let items: Vec<Value> = out.iter().map(partial_metadata).collect();
        return Ok((
            200,
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}),
        ));
    }
    Ok((
        200,
        json!({"kind": format!("{}List", ctx.t.kind), "apiVersion": ctx.t.api_version(), "metadata": meta, "items": out}),
    ))
}

// ---------- writes ----------

#[derive(PartialEq, Clone, Copy)]
enum Validation {
    Strict,
    Warn,
    Ignore,
}

fn validation_mode(q: &Query) -> Result<Validation, ApiError> {
    match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => Ok(Validation::Warn),
        Some("Strict") => Ok(Validation::Strict),
        Some("Ignore") => Ok(Validation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {other}; supported values: Ignore, Strict, Warn"
        ))),
    }
}

fn parse_body(bytes: &[u8], headers: &HeaderMap) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf") {
        return crate::proto::decode(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")));
    }
    let parsed = if ct.contains("yaml") {
        serde_yaml::from_slice::<Value>(bytes).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(bytes)
            .or_else(|e| serde_yaml::from_slice::<Value>(bytes).map_err(|_| e.to_string()))
    };
    parsed.map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

const META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Drops fields the kind does not have; returns their paths.
fn drop_unknown(t: &ResourceType, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let keys: Vec<String> = meta
            .keys()
            .filter(|k| !META_FIELDS.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in keys {
            meta.remove(&k);
            unknown.push(format!("metadata.{k}"));
        }
    }
    if let Some(schema) = &t.schema {
        unknown.extend(schema::prune(obj, schema));
    } else if let (Some(fields), Some(m)) = (t.builtin_fields(), obj.as_object_mut()) {
        let keys: Vec<String> = m
            .keys()
            .filter(|k| {
                !fields.contains(&k.as_str())
                    && !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
            })
            .cloned()
            .collect();
        for k in keys {
            m.remove(&k);
            unknown.push(k);
        }
    }
    unknown
}

fn spec_part(t: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if t.status_subresource {
            m.remove("status");
        }
    }
    o
}

fn strip_volatile(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
            for e in entries {
                e.as_object_mut().map(|e| e.remove("time"));
            }
        }
    }
    o
}

/// Admission for a write: unknown fields, subresource isolation, system metadata, defaults,
/// validation and generation. `incoming` is the full desired object.
fn admit(ctx: &mut Ctx, old: Option<&Value>, mut incoming: Value) -> Result<Value, ApiError> {
    let mode = validation_mode(&ctx.q)?;
    let unknown = drop_unknown(&ctx.t, &mut incoming);
    incoming = ctx.ingest(incoming);
    if !unknown.is_empty() {
        match mode {
            Validation::Strict => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|u| format!("unknown field {u:?}"))
                    .collect();
                let kind = &ctx.t.kind;
                return Err(ApiError::bad_request(format!(
                    "{kind} in version {:?} cannot be handled as a {kind}: strict decoding error: {}",
                    ctx.t.version,
                    list.join(", ")
                )));
            }
            Validation::Warn => ctx
                .warnings
                .extend(unknown.iter().map(|u| format!("unknown field {u:?}"))),
            Validation::Ignore => {}
        }
    }
    let sub = ctx.sub().to_string();
    let mut new = if sub == "status" {
        let mut base = old.cloned().unwrap_or(Value::Null);
        match incoming.get("status") {
            Some(s) => base["status"] = s.clone(),
            None => {
                base.as_object_mut().map(|m| m.remove("status"));
            }
        }
        base["metadata"]["managedFields"] = incoming["metadata"]["managedFields"].clone();
        if incoming["metadata"]["managedFields"].is_null() {
            base["metadata"]
                .as_object_mut()
                .map(|m| m.remove("managedFields"));
        }
        base
    } else {
        if ctx.t.status_subresource {
            match old.and_then(|o| o.get("status")) {
                Some(s) if ctx.t.plural != "namespaces" => incoming["status"] = s.clone(),
                _ if ctx.t.plural == "namespaces"
                    || ctx.t.plural == "customresourcedefinitions" => {}
                _ => {
                    incoming.as_object_mut().map(|m| m.remove("status"));
                }
            }
        }
        incoming
    };
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    let name = new["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match old {
        Some(o) => {
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ] {
                match o["metadata"].get(f) {
                    Some(v) => new["metadata"][f] = v.clone(),
                    None => {
                        new["metadata"].as_object_mut().map(|m| m.remove(f));
                    }
                }
            }
        }
        None => {
            new["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            new["metadata"]["creationTimestamp"] = json!(now());
            for f in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                new["metadata"].as_object_mut().map(|m| m.remove(f));
            }
            if ctx.t.namespaced {
                new["metadata"]["namespace"] = json!(ctx.ns());
            } else {
                new["metadata"]
                    .as_object_mut()
                    .map(|m| m.remove("namespace"));
            }
            if ctx.t.tracks_generation() {
                new["metadata"]["generation"] = json!(1);
            }
        }
    }
    // Kind specifics.
    match (ctx.t.group.as_str(), ctx.t.plural.as_str()) {
        ("", "secrets") => {
            if let Some(Value::Object(sd)) =
                new.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                for (k, v) in sd {
                    let enc = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    new["data"][k] = json!(enc);
                }
            }
            if new["type"].as_str().is_none_or(str::is_empty) {
                new["type"] = json!("Opaque");
            }
            if let Some(data) = new["data"].as_object() {
                for (k, v) in data {
                    if v.as_str().is_none_or(|s| {
                        base64::engine::general_purpose::STANDARD.decode(s).is_err()
                    }) {
                        return Err(ApiError::bad_request(format!(
                            "error decoding data.{k}: illegal base64 data"
                        )));
                    }
                }
            }
            if old.is_some_and(|o| o["type"] != new["type"]) {
                let errs = [FieldError::new(
                    FieldErrorKind::Invalid,
                    "type",
                    Some(new["type"].clone()),
                    "field is immutable",
                )];
                return Err(ApiError::invalid("", "Secret", &name, &errs));
            }
        }
        ("", "namespaces") => {
            if new["spec"]["finalizers"].is_null() {
                new["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            if new["status"]["phase"].is_null() {
                new["status"]["phase"] = json!("Active");
            }
            new["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => admit_crd(&mut new, &name)?,
        _ => {}
    }
    let mut errs = Vec::new();
    if let Some(o) = old {
        // Objects being deleted accept no new finalizers.
        if !o["metadata"]["deletionTimestamp"].is_null() {
            let before: Vec<&str> = o["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let added: Vec<String> = new["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|f| !before.contains(f))
                .map(|f| format!("{f:?}"))
                .collect();
            if !added.is_empty() {
                errs.push(FieldError::new(
                    FieldErrorKind::Forbidden,
                    "metadata.finalizers",
                    None,
                    format!("no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}", added.join(", ")),
                ));
            }
        }
        // Immutable Secrets and ConfigMaps.
        if ctx.t.group.is_empty()
            && matches!(ctx.t.plural.as_str(), "secrets" | "configmaps")
            && o["immutable"] == json!(true)
        {
            for f in ["data", "binaryData", "immutable"] {
                if o.get(f) != new.get(f) && !(f == "binaryData" && ctx.t.plural == "secrets") {
                    errs.push(FieldError::new(
                        FieldErrorKind::Forbidden,
                        f,
                        None,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
    }
    let event_name_exempt = ctx.t.group.is_empty() && ctx.t.plural == "events";
    if !event_name_exempt {
        let name_errors = if ctx.t.group == "rbac.authorization.k8s.io" {
            crate::validation::path_segment_name(&name)
        } else {
            crate::validation::dns1123_subdomain(&name)
        };
        for m in name_errors {
            errs.push(FieldError::new(
                FieldErrorKind::Invalid,
                "metadata.name",
                Some(json!(name)),
                m,
            ));
        }
    }
    errs.extend(crate::validation::object_meta(&new["metadata"]));
    if ctx.t.group.is_empty() && matches!(ctx.t.plural.as_str(), "secrets" | "configmaps") {
        errs.extend(crate::validation::config_data(
            &new,
            ctx.t.plural == "secrets",
        ));
    }
    if let Some(schema) = ctx.t.schema.clone() {
        schema::apply_defaults(&mut new, &schema);
        errs.extend(schema::validate(&new, old, &schema));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(&ctx.t.group, &ctx.t.kind, &name, &errs));
    }
    if let Some(o) = old
        && ctx.t.tracks_generation()
        && spec_part(&ctx.t, o) != spec_part(&ctx.t, &new)
    {
        let g = o["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(g);
    }
    Ok(new)
}

/// Structural-schema checks of a CRD version schema: every specified node needs a `type`
/// (unless it preserves unknown fields or is int-or-string); value-validation branches
/// (allOf/anyOf/oneOf/not) are exempt.
fn structural_errors(schema: &Value, path: &str, place: &str, errs: &mut Vec<FieldError>) {
    let exempt = schema["x-kubernetes-int-or-string"] == json!(true)
        || schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
    if schema.get("type").is_none() && !exempt {
        errs.push(FieldError::new(
            FieldErrorKind::Required,
            &format!("{path}.type"),
            None,
            format!("must not be empty {place}"),
        ));
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, child) in props {
            structural_errors(
                child,
                &format!("{path}.properties[{k}]"),
                "for specified object fields",
                errs,
            );
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        structural_errors(
            items,
            &format!("{path}.items"),
            "for specified array items",
            errs,
        );
    }
    if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        structural_errors(
            ap,
            &format!("{path}.additionalProperties"),
            "for specified additionalProperties",
            errs,
        );
    }
}

fn admit_crd(new: &mut Value, name: &str) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let versions = new["spec"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // When every version has the same schema, kube-apiserver validates it as the internal
    // CRD's single top-level `spec.validation` and names that path in its errors.
    let shared = !versions.is_empty()
        && versions
            .iter()
            .all(|v| v["schema"] == versions[0]["schema"]);
    for (i, v) in versions.iter().enumerate() {
        if shared && i > 0 {
            break;
        }
        let path = if shared {
            "spec.validation.openAPIV3Schema".to_owned()
        } else {
            format!("spec.versions[{i}].schema.openAPIV3Schema")
        };
        match v["schema"].get("openAPIV3Schema") {
            Some(schema) => structural_errors(schema, &path, "at the root", &mut errs),
            None => errs.push(FieldError::new(
                FieldErrorKind::Required,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                None,
                "schemas are required",
            )),
        }
    }
    if versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count()
        != 1
    {
        errs.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec.versions",
            Some(json!(
                versions
                    .iter()
                    .map(|v| v["name"].clone())
                    .collect::<Vec<_>>()
            )),
            "must have exactly one version marked as storage version",
        ));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            name,
            &errs,
        ));
    }
    let group = new["spec"]["group"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let plural = new["spec"]["names"]["plural"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name != format!("{plural}.{group}") {
        let errs = [FieldError::new(
            FieldErrorKind::Invalid,
            "metadata.name",
            Some(json!(name)),
            "must be spec.names.plural+\".\"+spec.group",
        )];
        return Err(ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            name,
            &errs,
        ));
    }
    let mut names = new["spec"]["names"].clone();
    if names["singular"].is_null() {
        names["singular"] = json!(names["kind"].as_str().unwrap_or_default().to_lowercase());
    }
    if names["listKind"].is_null() {
        names["listKind"] = json!(format!(
            "{}List",
            names["kind"].as_str().unwrap_or_default()
        ));
    }
    let ts = now();
    let storage: Vec<Value> = new["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    new["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": ts, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": ts, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ],
        "storedVersions": storage,
    });
    Ok(())
}

/// Stores an admitted object (unless dry-run); no-op writes do not bump the resourceVersion.
/// Stores `new` in place of `old`, checking under the store lock that `old` is still what is
/// stored (another writer may have raced us): a 409 then, never a lost update.
fn store(ctx: &Ctx, key: Key, old: Option<&Value>, new: Value) -> Result<Value, ApiError> {
    if let Some(o) = old
        && strip_volatile(o) == strip_volatile(&new)
    {
        return Ok(o.clone());
    }
    if ctx.dry_run() {
        return Ok(new);
    }
    let mut st = ctx.sim.state();
    if let Some(o) = old
        && st
            .objects
            .get(&key)
            .map(|s| &s["metadata"]["resourceVersion"])
            != Some(&o["metadata"]["resourceVersion"])
    {
        return Err(ApiError::modified(&ctx.t.group, &ctx.t.plural, &key.3));
    }
    let finalized = !new["metadata"]["deletionTimestamp"].is_null()
        && new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    let out = if finalized {
        st.remove(key.clone())
    } else {
        st.commit(key.clone(), Some(new))
    };
    if ctx.t.plural == "customresourcedefinitions" {
        st.refresh_types();
    }
    Ok(out)
}

fn check_namespace(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.t.namespaced {
        let st = ctx.sim.state();
        let key = (
            "".to_string(),
            "namespaces".to_string(),
            String::new(),
            ctx.ns().to_string(),
        );
        if !st.objects.contains_key(&key) {
            return Err(ApiError::not_found("", "namespaces", ctx.ns()));
        }
    }
    Ok(())
}

fn create(ctx: &mut Ctx, bytes: &[u8]) -> Result<(u16, Value), ApiError> {
    let mut body = parse_body(bytes, &ctx.headers)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be an object",
        ));
    }
    check_namespace(ctx)?;
    if body["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        match body["metadata"]["generateName"].as_str() {
            Some(prefix) if !prefix.is_empty() => {
                let suffix: String = uuid::Uuid::new_v4()
                    .simple()
                    .to_string()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(5)
                    .collect();
                body["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
            }
            _ => {
                let errs = [FieldError::new(
                    FieldErrorKind::Required,
                    "metadata.name",
                    None,
                    "name or generateName is required",
                )];
                return Err(ApiError::invalid(&ctx.t.group, &ctx.t.kind, "", &errs));
            }
        }
    }
    if let Some(ns) = body["metadata"]["namespace"].as_str()
        && ctx.t.namespaced
        && !ns.is_empty()
        && ns != ctx.ns()
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = ctx.key(&name);
    if body["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(ApiError::unknown(
            500,
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if ctx.sim.state().objects.contains_key(&key) {
        return Err(ApiError::already_exists(&ctx.t.group, &ctx.t.plural, &name));
    }
    let mut new = admit(ctx, None, body)?;
    let manager = ctx.manager();
    let av = ctx.t.api_version();
    let now = now();
    ssa::record_update(
        None,
        &mut new,
        &ssa::Write {
            manager: &manager,
            api_version: &av,
            subresource: "",
            schema: ctx.t.schema.as_ref(),
            now: &now,
        },
    );
    let mut st = ctx.sim.state();
    if st.objects.contains_key(&key) {
        return Err(ApiError::already_exists(&ctx.t.group, &ctx.t.plural, &name));
    }
    let out = if ctx.dry_run() {
        new
    } else {
        let o = st.commit(key, Some(new));
        if ctx.t.plural == "customresourcedefinitions" {
            st.refresh_types();
        }
        o
    };
    drop(st);
    Ok((201, ctx.present(&out)))
}

fn update(ctx: &mut Ctx, bytes: &[u8]) -> Result<(u16, Value), ApiError> {
    let body = parse_body(bytes, &ctx.headers)?;
    let name = ctx.name().to_string();
    if let Some(n) = body["metadata"]["name"].as_str()
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let key = ctx.key(&name);
    let old = ctx.sim.state().objects.get(&key).cloned();
    let Some(old) = old else {
        return Err(ApiError::not_found(&ctx.t.group, &ctx.t.plural, &name));
    };
    match body["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        Some(rv) if Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            return Err(ApiError::modified(&ctx.t.group, &ctx.t.plural, &name));
        }
        None if ctx.t.is_custom() => {
            let errs = [FieldError::new(
                FieldErrorKind::Invalid,
                "metadata.resourceVersion",
                Some(json!("0x0")),
                "must be specified for an update",
            )];
            let mut e = ApiError::invalid(&ctx.t.group, &ctx.t.kind, &name, &errs);
            e.message = e.message.replace("\"0x0\"", "0x0");
            return Err(e);
        }
        _ => {}
    }
    write_existing(ctx, key, &old, body, false)
}

fn write_existing(
    ctx: &mut Ctx,
    key: Key,
    old: &Value,
    desired: Value,
    applied: bool,
) -> Result<(u16, Value), ApiError> {
    let mut new = admit(ctx, Some(old), desired)?;
    if !applied {
        let manager = ctx.manager();
        let av = ctx.t.api_version();
        let now = now();
        let sub = ctx.sub().to_string();
        ssa::record_update(
            Some(old),
            &mut new,
            &ssa::Write {
                manager: &manager,
                api_version: &av,
                subresource: &sub,
                schema: ctx.t.schema.as_ref(),
                now: &now,
            },
        );
    }
    let out = store(ctx, key, Some(old), new)?;
    Ok((200, ctx.present(&out)))
}

/// A patch that names no resourceVersion is applied to the object as stored: when another
/// write lands between reading the object and storing the result, the API server's
/// GuaranteedUpdate applies the patch again to the newer object instead of answering 409. Only a
/// patch that carries a resourceVersion (a precondition the client asked for) gets the 409.
fn patch_retrying(ctx: &mut Ctx, bytes: &[u8]) -> Result<(u16, Value), ApiError> {
    const ATTEMPTS: usize = 5;
    let preconditioned = String::from_utf8_lossy(bytes).contains("resourceVersion");
    let mut attempt = 1;
    loop {
        match patch_handler(ctx, bytes) {
            Err(err) if err.code == 409 && !preconditioned && attempt < ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

fn patch_handler(ctx: &mut Ctx, bytes: &[u8]) -> Result<(u16, Value), ApiError> {
    let ct = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let ct = ct.split(';').next().unwrap_or_default().trim().to_string();
    let name = ctx.name().to_string();
    let key = ctx.key(&name);
    let old = ctx.sim.state().objects.get(&key).cloned();
    let accepted_custom = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
        "application/apply-patch+cbor",
    ];
    match ct.as_str() {
        "application/apply-patch+yaml" | "application/apply-patch+json" => {
            let applied = parse_body(bytes, &ctx.headers)?;
            if !applied.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding YAML: the applied configuration must be an object",
                ));
            }
            if let Some(n) = applied["metadata"]["name"].as_str()
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            let Some(manager) = ctx.q.get("fieldManager").filter(|m| !m.is_empty()).cloned() else {
                let errs = [FieldError::new(
                    FieldErrorKind::Required,
                    "fieldManager",
                    None,
                    "is required for apply patch",
                )];
                return Err(ApiError::invalid("meta.k8s.io", "PatchOptions", "", &errs));
            };
            if let Some(ns) = applied["metadata"]["namespace"].as_str()
                && ctx.t.namespaced
                && !ns.is_empty()
                && ns != ctx.ns()
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let force = ctx.q.get("force").is_some_and(|f| f == "true");
            let mut applied = applied;
            applied["apiVersion"] = json!(ctx.t.api_version());
            applied["kind"] = json!(ctx.t.kind);
            if let Some(rv) = applied["metadata"]["resourceVersion"].as_str()
                && old
                    .as_ref()
                    .is_none_or(|o| o["metadata"]["resourceVersion"].as_str() != Some(rv))
            {
                return Err(ApiError::modified(&ctx.t.group, &ctx.t.plural, &name));
            }
            let sub = ctx.sub().to_string();
            if sub == "status" {
                let status = applied.get("status").cloned();
                applied = json!({"apiVersion": applied["apiVersion"], "kind": applied["kind"], "metadata": {"name": name}});
                if let Some(s) = status {
                    applied["status"] = s;
                }
            } else if ctx.t.status_subresource && ctx.t.is_custom() {
                applied.as_object_mut().map(|m| m.remove("status"));
            }
            if let Some(meta) = applied["metadata"].as_object_mut() {
                meta.remove("managedFields");
            }
            let av = ctx.t.api_version();
            let now = now();
            let w = ssa::Write {
                manager: &manager,
                api_version: &av,
                subresource: &sub,
                schema: ctx.t.schema.as_ref(),
                now: &now,
            };
            match old {
                Some(o) => {
                    let merged = ssa::apply(&o, &applied, force, &w)?;
                    write_existing(ctx, key, &o, merged, true)
                }
                None => {
                    if sub == "status" {
                        return Err(ApiError::not_found(&ctx.t.group, &ctx.t.plural, &name));
                    }
                    check_namespace(ctx)?;
                    let empty =
                        json!({"apiVersion": av, "kind": ctx.t.kind, "metadata": {"name": name}});
                    let merged = ssa::apply(&empty, &applied, force, &w)?;
                    let new = admit(ctx, None, merged)?;
                    // After defaulting and validation, before storing (dry runs included).
                    ctx.authorize_create()?;
                    let out = if ctx.dry_run() {
                        new
                    } else {
                        let mut st = ctx.sim.state();
                        if st.objects.contains_key(&key) {
                            return Err(ApiError::modified(&ctx.t.group, &ctx.t.plural, &name));
                        }
                        let o = st.commit(key, Some(new));
                        if ctx.t.plural == "customresourcedefinitions" {
                            st.refresh_types();
                        }
                        o
                    };
                    Ok((201, ctx.present(&out)))
                }
            }
        }
        "application/merge-patch+json"
        | "application/json-patch+json"
        | "application/strategic-merge-patch+json" => {
            if ct == "application/strategic-merge-patch+json" && ctx.t.is_custom() {
                return Err(ApiError::unsupported_media_type(&accepted_custom));
            }
            let Some(old) = old else {
                return Err(ApiError::not_found(&ctx.t.group, &ctx.t.plural, &name));
            };
            let patch_doc = parse_body(bytes, &ctx.headers)?;
            let mut target = ctx.present(&old);
            match ct.as_str() {
                "application/merge-patch+json" => patch::merge_patch(&mut target, &patch_doc),
                "application/json-patch+json" => patch::json_patch(&mut target, &patch_doc)?,
                _ => patch::strategic_merge(&mut target, &patch_doc),
            }
            if target["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                return Err(ApiError::modified(&ctx.t.group, &ctx.t.plural, &name));
            }
            if target["metadata"]["name"].as_str() != Some(name.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    target["metadata"]["name"].as_str().unwrap_or_default()
                )));
            }
            write_existing(ctx, key, &old, target, false)
        }
        _ => Err(ApiError::unsupported_media_type(&[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
            "application/strategic-merge-patch+json",
        ])),
    }
}

fn delete_options(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn delete_one(ctx: &Ctx, key: Key, opts: &Value) -> Result<(u16, Value), ApiError> {
    let name = key.3.clone();
    let mut st = ctx.sim.state();
    let Some(old) = st.objects.get(&key).cloned() else {
        return Err(ApiError::not_found(&ctx.t.group, &ctx.t.plural, &name));
    };
    if let Some(rv) = opts["preconditions"]["resourceVersion"].as_str()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(
            &ctx.t.group,
            &ctx.t.plural,
            &name,
            &format!(
                "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(uid) = opts["preconditions"]["uid"].as_str()
        && Some(uid) != old["metadata"]["uid"].as_str()
    {
        return Err(ApiError::conflict(
            &ctx.t.group,
            &ctx.t.plural,
            &name,
            &format!(
                "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been modified",
                old["metadata"]["uid"].as_str().unwrap_or_default()
            ),
        ));
    }
    let has_finalizers = old["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if !old["metadata"]["deletionTimestamp"].is_null() || ctx.dry_run() {
            return Ok((200, ctx.present(&old)));
        }
        let mut new = old.clone();
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if ctx.t.tracks_generation() {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        let out = st.commit(key, Some(new));
        return Ok((200, ctx.present(&out)));
    }
    if ctx.dry_run() {
        return Ok((200, ctx.present(&old)));
    }
    let orphan = opts["propagationPolicy"].as_str() == Some("Orphan")
        || opts["orphanDependents"] == json!(true);
    if orphan && let Some(uid) = old["metadata"]["uid"].as_str() {
        st.orphan_dependents(uid);
    }
    let deleted = st.remove(key.clone());
    // Deleting a namespace removes its contents; deleting a CRD removes its custom resources.
    if ctx.t.plural == "namespaces" && ctx.t.group.is_empty() {
        let doomed: Vec<Key> = st
            .objects
            .keys()
            .filter(|k| k.2 == name && !k.2.is_empty())
            .cloned()
            .collect();
        for k in doomed {
            if st.objects.contains_key(&k) {
                st.remove(k);
            }
        }
    }
    if ctx.t.plural == "customresourcedefinitions" {
        let group = old["spec"]["group"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let plural = old["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let doomed: Vec<Key> = st
            .objects
            .keys()
            .filter(|k| k.0 == group && k.1 == plural)
            .cloned()
            .collect();
        for k in doomed {
            if st.objects.contains_key(&k) {
                st.remove(k);
            }
        }
        st.refresh_types();
    }
    let mut details = json!({"name": name, "kind": ctx.t.plural, "uid": old["metadata"]["uid"]});
    if !ctx.t.group.is_empty() {
        details["group"] = json!(ctx.t.group);
    }
    // Registries with ReturnDeletedObject answer the object; the others (custom resources
    // included) a Success Status.
    if ctx.t.group.is_empty() && ctx.t.plural == "serviceaccounts" {
        return Ok((200, ctx.present(&deleted)));
    }
    Ok((
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    ))
}

fn delete(ctx: &Ctx, bytes: &[u8]) -> Result<(u16, Value), ApiError> {
    let opts = delete_options(bytes);
    delete_one(ctx, ctx.key(ctx.name()), &opts)
}

fn delete_collection(ctx: &Ctx, bytes: &[u8]) -> Result<(u16, Value), ApiError> {
    let filter = Filter::from(&ctx.q)?;
    let opts = delete_options(bytes);
    let ns = if ctx.t.namespaced {
        ctx.p.namespace.as_deref()
    } else {
        None
    };
    let items = ctx
        .sim
        .state()
        .list(&ctx.t.storage_group, &ctx.t.plural, ns);
    let mut out = Vec::new();
    for (k, obj) in items {
        if filter.matches(&ctx.present(&obj))
            && let Ok((_, v)) = delete_one(ctx, k.clone(), &opts)
        {
            if v["kind"] == "Status" {
                out.push(ctx.present(&obj));
            } else {
                out.push(v);
            }
        }
    }
    let rv = ctx.sim.state().rv;
    Ok((
        200,
        json!({"kind": format!("{}List", ctx.t.kind), "apiVersion": ctx.t.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": out}),
    ))
}

fn token_request(ctx: &Ctx, bytes: &[u8]) -> Result<(u16, Value), ApiError> {
    let req = parse_body(bytes, &ctx.headers).unwrap_or(json!({}));
    let key = ctx.key(ctx.name());
    let mut st = ctx.sim.state();
    if !st.objects.contains_key(&key) {
        return Err(ApiError::not_found("", "serviceaccounts", ctx.name()));
    }
    let seconds = req["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let token = format!("kube-sim.{}.{}", ctx.ns(), uuid::Uuid::new_v4().simple());
    st.tokens
        .insert(token.clone(), User::service_account(ctx.ns(), ctx.name()));
    let expires = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let audiences = if req["spec"]["audiences"].is_array() {
        req["spec"]["audiences"].clone()
    } else {
        json!(["https://kubernetes.default.svc.cluster.local"])
    };
    Ok((
        201,
        json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": ctx.name(), "namespace": ctx.ns(), "creationTimestamp": now()},
            "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": req["spec"]["boundObjectRef"].clone()},
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

// ---------- watch ----------

fn watch_handler(sim: Arc<Sim>, ctx: Ctx) -> Response {
    let filter = match Filter::from(&ctx.q) {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    let table = wants_table(&ctx.headers);
    let metadata_only = wants_metadata(&ctx.headers);
    let include = include_object(&ctx.q);
    let bookmarks = ctx
        .q
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let send_initial = ctx.q.get("sendInitialEvents").map(|v| v == "true");
    let timeout = ctx
        .q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let rv_param = ctx.q.get("resourceVersion").cloned().unwrap_or_default();
    let ns_filter = if ctx.t.namespaced {
        ctx.p.namespace.clone()
    } else {
        None
    };
    let name_filter = ctx.p.name.clone();
    let t = ctx.t.clone();
    let (initial, rx, start_rv, gone) = {
        let st = sim.state();
        let rx = sim.tx.subscribe();
        let mut initial: Vec<(&'static str, Value)> = Vec::new();
        let mut gone = None;
        let start_rv;
        let initial_state = send_initial == Some(true)
            || (send_initial.is_none() && (rv_param.is_empty() || rv_param == "0"));
        if initial_state {
            for (_, obj) in st.list(&t.storage_group, &t.plural, ns_filter.as_deref()) {
                initial.push(("ADDED", obj));
            }
            start_rv = st.rv;
        } else if rv_param.is_empty() || rv_param == "0" {
            start_rv = st.rv;
        } else {
            let n = rv_param.parse::<u64>().unwrap_or(0);
            if n < st.compacted {
                gone = Some(too_old(n, st.compacted));
                start_rv = st.rv;
            } else {
                // Replay the retained history after `n` as real events.
                initial = st
                    .history
                    .iter()
                    .filter(|e| {
                        e.rv > n
                            && e.group == t.storage_group
                            && e.plural == t.plural
                            && ns_filter.as_ref().is_none_or(|ns| *ns == e.namespace)
                    })
                    .map(|e| {
                        (
                            e.kind,
                            json!({"__event": true, "object": e.object, "old": e.old}),
                        )
                    })
                    .collect();
                start_rv = st.rv;
            }
        }
        (initial, rx, start_rv, gone)
    };
    let mut drop_rx = sim.drop_watches.subscribe();
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(256);
    let bookmark_every = sim.bookmark_interval;
    tokio::spawn(async move {
        let mut rx = rx;
        let mut first = true;
        let encode = |kind: &str, obj: &Value, first: &mut bool| -> bytes::Bytes {
            let object = if metadata_only && kind != "BOOKMARK" && kind != "ERROR" {
                partial_metadata(obj)
            } else if table && kind != "BOOKMARK" && kind != "ERROR" {
                let tbl = table::table(
                    &t,
                    std::slice::from_ref(obj),
                    include,
                    json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                    *first,
                );
                *first = false;
                tbl
            } else {
                obj.clone()
            };
            let mut line =
                serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
            line.push(b'\n');
            bytes::Bytes::from(line)
        };
        let present = |obj: &Value| -> Value {
            let mut o = if t.group == "events.k8s.io" {
                core_to_events(obj)
            } else {
                obj.clone()
            };
            o["apiVersion"] = json!(t.api_version());
            o["kind"] = json!(t.kind);
            o
        };
        let visible = |obj: &Value| -> bool {
            name_filter
                .as_ref()
                .is_none_or(|n| obj["metadata"]["name"].as_str() == Some(n.as_str()))
                && filter.matches(obj)
        };
        let bookmark = |rv: u64, end_initial: bool| -> Value {
            let mut b = json!({"kind": t.kind, "apiVersion": t.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
            if end_initial {
                b["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            b
        };
        if let Some(e) = gone {
            let _ = out_tx
                .send(Ok(encode("ERROR", &e.status(), &mut first)))
                .await;
            return;
        }
        // Translate one stored event into what this watcher sees (selector transitions).
        let translate = |kind: &str, obj: &Value, old: Option<&Value>| -> Option<(String, Value)> {
            let new_p = present(obj);
            let now_in = visible(&new_p);
            let old_in = old.map(|o| visible(&present(o))).unwrap_or(false);
            match kind {
                "ADDED" if now_in => Some(("ADDED".into(), new_p)),
                "DELETED" if now_in || old_in => Some(("DELETED".into(), new_p)),
                "MODIFIED" if now_in && old_in => Some(("MODIFIED".into(), new_p)),
                "MODIFIED" if now_in => Some(("ADDED".into(), new_p)),
                "MODIFIED" if old_in => Some(("DELETED".into(), new_p)),
                _ => None,
            }
        };
        for (kind, obj) in &initial {
            let line = if obj.get("__event").is_some() {
                translate(
                    kind,
                    &obj["object"],
                    obj.get("old").filter(|o| !o.is_null()),
                )
            } else {
                let p = present(obj);
                visible(&p).then(|| ("ADDED".to_string(), p))
            };
            if let Some((k, o)) = line
                && out_tx.send(Ok(encode(&k, &o, &mut first))).await.is_err()
            {
                return;
            }
        }
        let mut seen_rv = start_rv;
        if send_initial == Some(true)
            && bookmarks
            && out_tx
                .send(Ok(encode("BOOKMARK", &bookmark(seen_rv, true), &mut first)))
                .await
                .is_err()
        {
            return;
        }
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        loop {
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= seen_rv {
                            continue;
                        }
                        seen_rv = e.rv;
                        if e.group != t.storage_group || e.plural != t.plural || ns_filter.as_ref().is_some_and(|ns| *ns != e.namespace) {
                            continue;
                        }
                        if let Some((k, o)) = translate(e.kind, &e.object, e.old.as_ref())
                            && out_tx.send(Ok(encode(&k, &o, &mut first))).await.is_err() {
                                return;
                            }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick() => {
                    if bookmarks && out_tx.send(Ok(encode("BOOKMARK", &bookmark(seen_rv, false), &mut first))).await.is_err() {
                        return;
                    }
                }
                _ = sleep => {
                    if bookmarks {
                        let _ = out_tx.send(Ok(encode("BOOKMARK", &bookmark(seen_rv, false), &mut first))).await;
                    }
                    return;
                }
                _ = drop_rx.changed() => return,
                _ = out_tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r.into_response()
}
