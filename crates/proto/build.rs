//! Compiles every `.proto` under `proto/` with protox (no system protoc) into prost/tonic code,
//! keeps the encoded descriptor set (with custom options) for reflection, and generates the
//! method → permission table from each method's `(metropolis.proto.ext.authorization)` option.
//!
//! A method of a `metropolis.*` service without that option fails the build: upstream fails such
//! calls at runtime ("failing safe"), we refuse to ship them at all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost_reflect::{DescriptorPool, Value};

/// Services in these packages must declare an authorization policy on every method.
const POLICED_PACKAGE_PREFIX: &str = "metropolis.";

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let proto_root = manifest.join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(&proto_root, &proto_root, &mut files);
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(f).display());
    }

    let mut compiler = protox::Compiler::new([&proto_root]).unwrap_or_else(|e| fail(&e));
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files).unwrap_or_else(|e| fail(&e));

    // The encoded form keeps custom options (the prost_types form drops them); reflection and
    // the authorization table both need them.
    let encoded = compiler.encode_file_descriptor_set();
    std::fs::write(out_dir.join("descriptor.bin"), &encoded).unwrap_or_else(|e| fail(&e));

    tonic_prost_build::configure()
        .include_file("_includes.rs")
        // Unimplemented by default: a follower or a test server implements only what it serves.
        .generate_default_stubs(true)
        .compile_fds(compiler.file_descriptor_set())
        .unwrap_or_else(|e| fail(&e));

    let table = authorization_table(&encoded);
    std::fs::write(out_dir.join("authorization_table.rs"), table).unwrap_or_else(|e| fail(&e));
}

fn fail(err: &dyn std::fmt::Display) -> ! {
    panic!("proto build failed: {err}");
}

fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| fail(&e)).path();
        if path.is_dir() {
            collect_protos(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(root).unwrap_or_else(|e| fail(&e));
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// Renders `METHOD_POLICIES`, sorted by path so lookups can binary-search.
fn authorization_table(encoded: &[u8]) -> String {
    let pool = DescriptorPool::decode(encoded).unwrap_or_else(|e| fail(&e));
    let ext = pool
        .get_extension_by_name("metropolis.proto.ext.authorization")
        .unwrap_or_else(|| fail(&"extension metropolis.proto.ext.authorization not found"));
    let permission = pool
        .get_enum_by_name("metropolis.proto.ext.Permission")
        .unwrap_or_else(|| fail(&"enum metropolis.proto.ext.Permission not found"));

    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for service in pool.services() {
        if !service.full_name().starts_with(POLICED_PACKAGE_PREFIX) {
            continue;
        }
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let options = method.options();
            if !options.has_extension(&ext) {
                missing.push(path);
                continue;
            }
            let value = options.get_extension(&ext);
            let msg = value
                .as_message()
                .unwrap_or_else(|| fail(&"authorization option is not a message"));
            let allow_unauthenticated = msg
                .get_field_by_name("allow_unauthenticated")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let mut need = Vec::new();
            if let Some(list) = msg.get_field_by_name("need") {
                for v in list.as_list().unwrap_or(&[]) {
                    let Value::EnumNumber(n) = v else {
                        fail(&format!("{path}: need is not an enum"))
                    };
                    let name = permission
                        .get_value(*n)
                        .unwrap_or_else(|| fail(&format!("{path}: unknown permission {n}")))
                        .name()
                        .to_string();
                    need.push(variant_name(&name));
                }
            }
            rows.push((path, allow_unauthenticated, need));
        }
    }
    if !missing.is_empty() {
        fail(&format!(
            "these methods have no (metropolis.proto.ext.authorization) option; every Metropolis RPC must declare who may call it: {}",
            missing.join(", ")
        ));
    }
    rows.sort();

    let mut out = String::from(
        "/// Every Metropolis RPC with its declared policy, sorted by path (generated by build.rs).\n",
    );
    out.push_str("pub static METHOD_POLICIES: &[MethodPolicy] = &[\n");
    for (path, allow_unauthenticated, need) in rows {
        let need: Vec<String> = need.iter().map(|v| format!("Permission::{v}")).collect();
        let _ = writeln!(
            out,
            "    MethodPolicy {{ path: {path:?}, allow_unauthenticated: {allow_unauthenticated}, need: &[{}] }},",
            need.join(", ")
        );
    }
    out.push_str("];\n");
    out
}

/// prost's Rust variant name for an enum value: strip the enum-name prefix, then UpperCamelCase.
fn variant_name(value: &str) -> String {
    let stripped = value.strip_prefix("PERMISSION_").unwrap_or(value);
    stripped
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}
