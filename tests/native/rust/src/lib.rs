//! A CLIProxyAPI-ABI (version 1) plugin for aogstream's tests, written in Rust with no
//! external crates, the way a third party writes one against CPA's ABI
//! (spec/native-abi.md §1): `extern "C"` structs declared by hand,
//! `cliproxy_plugin_init`, `call`, a `free_buffer` that rebuilds each answer's
//! allocation from the length the host hands back (`Vec::from_raw_parts(ptr, len, len)`),
//! and `shutdown`. Request fields are found by plain text search, as CPA's Rust example
//! does.
//!
//! It registers the model `rust-echo` (`model.register`) and an executor speaking
//! `openai` (Chat Completions): `executor.execute` answers "hello from Rust", and
//! `executor.execute_stream` answers synchronous `chunks` "hello", " from", " Rust".
//! Every executor call logs "rust-test executing" through `host.log`.
//!
//! Buffer accounting: every answer buffer is remembered with its length; `free_buffer`
//! checks the pointer and length it gets against that before rebuilding the `Vec`
//! (a mismatch is counted and the buffer leaked rather than freed wrongly). A chat
//! whose last message is "stats" answers `freed=<n> bad=<n> outstanding=<n>`.

use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

#[repr(C)]
pub struct Buffer {
    ptr: *mut u8,
    len: usize,
}

type HostCall = extern "C" fn(*mut c_void, *const c_char, *const u8, usize, *mut Buffer) -> c_int;
type FreeFn = extern "C" fn(*mut c_void, usize);

#[repr(C)]
pub struct HostApi {
    abi_version: u32,
    host_ctx: *mut c_void,
    call: Option<HostCall>,
    free_buffer: Option<FreeFn>,
}

#[repr(C)]
pub struct PluginApi {
    abi_version: u32,
    call: Option<extern "C" fn(*const c_char, *const u8, usize, *mut Buffer) -> c_int>,
    free_buffer: Option<FreeFn>,
    shutdown: Option<extern "C" fn()>,
}

static HOST: AtomicPtr<HostApi> = AtomicPtr::new(std::ptr::null_mut());
static FREED: AtomicUsize = AtomicUsize::new(0);
static BAD: AtomicUsize = AtomicUsize::new(0);
static OUTSTANDING: Mutex<Option<HashMap<usize, usize>>> = Mutex::new(None);

// ---- base64 and text search --------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity((data.len() + 2) / 3 * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut v, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let i = match B64.iter().position(|&x| x == c) {
            Some(i) => i,
            None => break,
        };
        v = (v << 6) | i as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((v >> bits) & 0xff) as u8);
        }
    }
    out
}

/// The string value of `"key":"..."` (no unescaping), as CPA's examples read fields.
fn find_string<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = json.find(&pat)? + pat.len();
    let end = json[start..].find('"')? + start;
    Some(&json[start..end])
}

fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

// ---- buffers ---------------------------------------------------------------------------------

/// `text` as an answer buffer: a boxed slice (capacity == length), remembered.
fn reply(response: *mut Buffer, text: String) -> c_int {
    let boxed = text.into_bytes().into_boxed_slice();
    let len = boxed.len();
    let ptr = Box::into_raw(boxed) as *mut u8;
    OUTSTANDING.lock().unwrap().get_or_insert_with(HashMap::new).insert(ptr as usize, len);
    unsafe {
        (*response).ptr = ptr;
        (*response).len = len;
    }
    0
}

fn ok(response: *mut Buffer, result: &str) -> c_int {
    reply(response, format!("{{\"ok\":true,\"result\":{result}}}"))
}

extern "C" fn plugin_free(ptr: *mut c_void, len: usize) {
    if ptr.is_null() {
        return;
    }
    let known = OUTSTANDING.lock().unwrap().get_or_insert_with(HashMap::new).remove(&(ptr as usize));
    if known != Some(len) {
        BAD.fetch_add(1, Ordering::SeqCst);
        return; // leak it: rebuilding a Vec with a wrong length is undefined behaviour
    }
    drop(unsafe { Vec::from_raw_parts(ptr as *mut u8, len, len) });
    FREED.fetch_add(1, Ordering::SeqCst);
}

// ---- host callbacks -----------------------------------------------------------------------------

fn host_call(method: &str, request: &str) -> Option<String> {
    let host = HOST.load(Ordering::SeqCst);
    if host.is_null() {
        return None;
    }
    let host = unsafe { &*host };
    let call = host.call?;
    let name = format!("{method}\0");
    let mut out = Buffer { ptr: std::ptr::null_mut(), len: 0 };
    let rc = call(host.host_ctx, name.as_ptr() as *const c_char, request.as_ptr(), request.len(),
                  &mut out);
    let text = if out.ptr.is_null() {
        String::new()
    } else {
        let bytes = unsafe { std::slice::from_raw_parts(out.ptr, out.len) };
        String::from_utf8_lossy(bytes).into_owned()
    };
    if !out.ptr.is_null() {
        if let Some(free) = host.free_buffer {
            free(out.ptr as *mut c_void, out.len);
        }
    }
    if rc == 0 { Some(text) } else { None }
}

fn host_log(message: &str, cb: &str) {
    host_call("host.log", &format!(
        "{{\"level\":\"info\",\"message\":\"{}\",\"fields\":{{\"plugin\":\"rust-test\"}},\
         \"host_callback_id\":\"{}\"}}", escape(message), escape(cb)));
}

// ---- methods --------------------------------------------------------------------------------------

fn last_user_text(req: &str) -> String {
    let payload = String::from_utf8_lossy(&b64_decode(find_string(req, "Payload").unwrap_or("")))
        .into_owned();
    match payload.rfind("\"content\":\"") {
        Some(i) => {
            let rest = &payload[i + 11..];
            rest[..rest.find('"').unwrap_or(rest.len())].to_string()
        }
        None => String::new(),
    }
}

fn answer_text(req: &str) -> String {
    if last_user_text(req) == "stats" {
        let outstanding = OUTSTANDING.lock().unwrap().as_ref().map_or(0, |m| m.len());
        return format!("freed={} bad={} outstanding={}", FREED.load(Ordering::SeqCst),
                       BAD.load(Ordering::SeqCst), outstanding);
    }
    "hello from Rust".to_string()
}

fn chunk(text: Option<&str>) -> String {
    let (delta, finish) = match text {
        Some(t) => (format!("{{\"role\":\"assistant\",\"content\":\"{}\"}}", escape(t)),
                    "null".to_string()),
        None => ("{}".to_string(), "\"stop\"".to_string()),
    };
    format!("{{\"id\":\"r1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
             \"model\":\"rust-echo\",\"choices\":[{{\"index\":0,\"delta\":{delta},\
             \"finish_reason\":{finish}}}]}}")
}

fn dispatch(method: &str, req: &str, response: *mut Buffer) -> c_int {
    match method {
        "plugin.register" | "plugin.reconfigure" => ok(response,
            "{\"schema_version\":1,\"metadata\":{\"Name\":\"rust-test\",\"Version\":\"1.0.0\",\
             \"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/rust-test\",\
             \"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"model_registrar\":true,\
             \"executor\":true,\"executor_input_formats\":[\"openai\"],\
             \"executor_output_formats\":[\"openai\"]}}"),
        "model.register" => ok(response,
            "{\"Provider\":\"rust-test\",\"Models\":[{\"ID\":\"rust-echo\",\"Object\":\"model\"}]}"),
        "executor.execute" => {
            host_log("rust-test executing", find_string(req, "host_callback_id").unwrap_or(""));
            let text = answer_text(req);
            let body = format!(
                "{{\"id\":\"r1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"rust-echo\",\
                 \"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},\
                 \"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":1,\
                 \"completion_tokens\":3,\"total_tokens\":4}}}}", escape(&text));
            ok(response, &format!("{{\"Payload\":\"{}\",\"Headers\":null,\"Metadata\":null}}",
                                  b64_encode(body.as_bytes())))
        }
        "executor.execute_stream" => {
            host_log("rust-test executing", find_string(req, "host_callback_id").unwrap_or(""));
            let parts: Vec<String> = ["hello", " from", " Rust"].iter().map(|t| chunk(Some(t)))
                .chain(std::iter::once(chunk(None)))
                .map(|c| format!("{{\"Payload\":\"{}\",\"Err\":null}}", b64_encode(c.as_bytes())))
                .collect();
            ok(response, &format!("{{\"headers\":null,\"chunks\":[{}]}}", parts.join(",")))
        }
        _ => reply(response, "{\"ok\":false,\"error\":{\"code\":\"unknown_method\",\
                              \"message\":\"unknown method\"}}".to_string()),
    }
}

extern "C" fn plugin_call(method: *const c_char, request: *const u8, request_len: usize,
                          response: *mut Buffer) -> c_int {
    unsafe {
        (*response).ptr = std::ptr::null_mut();
        (*response).len = 0;
    }
    if method.is_null() {
        reply(response, "{\"ok\":false,\"error\":{\"code\":\"invalid_method\",\
                         \"message\":\"method is required\"}}".to_string());
        return 1;
    }
    let method = unsafe { CStr::from_ptr(method) }.to_string_lossy().into_owned();
    let req = if request.is_null() || request_len == 0 {
        String::new()
    } else {
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(request, request_len) })
            .into_owned()
    };
    dispatch(&method, &req, response)
}

extern "C" fn plugin_shutdown() {
    HOST.store(std::ptr::null_mut(), Ordering::SeqCst);
}

/// # Safety
/// Called by the host with valid pointers to its host table and our function table.
#[no_mangle]
pub unsafe extern "C" fn cliproxy_plugin_init(host: *const HostApi, plugin: *mut PluginApi) -> c_int {
    if host.is_null() || plugin.is_null() {
        return 1;
    }
    HOST.store(host as *mut HostApi, Ordering::SeqCst);
    (*plugin).abi_version = 1;
    (*plugin).call = Some(plugin_call);
    (*plugin).free_buffer = Some(plugin_free);
    (*plugin).shutdown = Some(plugin_shutdown);
    0
}
