//! Static bounds of a compiled filter, checked before it runs (see the limits in
//! [`super`]): its AST node count and depth, how deeply its comprehensions nest, and an
//! estimate of the work one evaluation may take.
//!
//! The estimate counts AST node evaluations. A comprehension costs its range once, then its
//! condition and step once per element, so nested comprehensions multiply: the estimate is,
//! in effect, the product of their range sizes. Every value is bounded in two ways: its
//! length (what a comprehension over it iterates) and its weight (elements and bytes in all,
//! what an equality, a membership test or a concatenation may touch), each also for its
//! elements. The bounds come from what the filter can see:
//!
//! * literals have their written size;
//! * `node` has a known shape: its labels are at most [`labels::MAX_LABELS_PER_NODE`] pairs
//!   of bounded strings, everything else is a handful of short fields ([`node_path`]);
//! * a comprehension variable is an element of its range, a comprehension's result grows by
//!   at most one element per iteration (the only comprehensions are those of the standard
//!   macros, and `optMap`'s, which iterate over nothing and just bind a value);
//! * any call is bounded by the sum of its operands, which holds for every function of the
//!   standard library (none builds a value larger than its inputs together; the weight of
//!   `[a, a]` or `s + s` is counted twice, so values that double at each level of `optMap`
//!   are caught too). Calls are charged their operands' weight (per [`WEIGHT_UNIT`]) for the
//!   operations linear in it.
//!
//! Every walk here is iterative or bounded by [`super::MAX_FILTER_DEPTH`] (checked first,
//! iteratively), so a hostile AST cannot exhaust the stack.

use std::collections::HashMap;

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr, LiteralValue, operators};

/// Weight (elements and bytes) that costs one unit when an operation goes over it: comparing
/// or copying 64 bytes is cheaper than evaluating one AST node, so a label comparison is not
/// charged like a loop.
pub const WEIGHT_UNIT: u64 = 64;

/// Upper bound of the weight of a node as filters see it: up to 128 labels of at most
/// 317 + 63 bytes (a prefixed key and a value), and a few short fields (ID, key, address,
/// boot ID, enums).
const NODE_WEIGHT: u64 = 64 << 10;

/// Upper bound of the weight of one label pair (key of at most 253 + 1 + 63 bytes, value of
/// at most 63, two fields).
const PAIR_WEIGHT: u64 = 512;

/// Upper bound of the length and weight of `node`'s messages other than the labels: they
/// have a handful of fields of short strings, bytes and numbers.
const SMALL_MESSAGE: Bound = Bound {
    len: 16,
    elem: 16,
    weight: 1 << 10,
    elem_weight: 1 << 10,
};

/// What [`measure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// AST nodes, after macro expansion.
    pub nodes: usize,
    /// Longest path from the root to a leaf.
    pub depth: usize,
    /// Deepest nesting of comprehensions inside comprehension bodies.
    pub comprehension_depth: usize,
    /// Estimated AST node evaluations of one evaluation (saturating).
    pub cost: u64,
}

/// Why a filter's AST was not measured in full: it is larger than `limit` in nodes or depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooBig {
    /// More than this many AST nodes.
    Nodes(usize),
    /// Deeper than this.
    Depth(usize),
}

/// Counts nodes and depth without recursion, stopping as soon as either passes its limit;
/// then, within those limits, estimates nesting and cost.
pub fn measure(root: &IdedExpr, max_nodes: usize, max_depth: usize) -> Result<Measure, TooBig> {
    let mut nodes = 0usize;
    let mut depth = 0usize;
    let mut stack: Vec<(&IdedExpr, usize)> = vec![(root, 1)];
    while let Some((e, d)) = stack.pop() {
        nodes += 1;
        depth = depth.max(d);
        if nodes > max_nodes {
            return Err(TooBig::Nodes(max_nodes));
        }
        if d > max_depth {
            return Err(TooBig::Depth(max_depth));
        }
        for child in children(&e.expr) {
            stack.push((child, d + 1));
        }
    }
    let mut scope = Scope::default();
    let est = estimate(root, &mut scope);
    Ok(Measure {
        nodes,
        depth,
        comprehension_depth: est.nesting,
        cost: est.cost,
    })
}

/// The fields of `node` an expression reads (`node.<field>`, `has(node.<field>)`), or
/// `None` if it uses `node` otherwise (whole, or under a comprehension variable of that
/// name): then it needs every field. Iterative, like [`measure`].
pub fn node_fields(root: &IdedExpr) -> Option<Vec<String>> {
    let mut fields: Vec<String> = Vec::new();
    let mut stack = vec![root];
    while let Some(e) = stack.pop() {
        match &e.expr {
            Expr::Select(s) if matches!(&s.operand.expr, Expr::Ident(n) if n == "node") => {
                if !fields.contains(&s.field) {
                    fields.push(s.field.clone());
                }
                continue;
            }
            Expr::Ident(name) if name == "node" => return None,
            Expr::Comprehension(c)
                if c.iter_var == "node"
                    || c.accu_var == "node"
                    || c.iter_var2.as_deref() == Some("node") =>
            {
                return None;
            }
            _ => {}
        }
        stack.extend(children(&e.expr));
    }
    Some(fields)
}

/// The direct children of an expression.
fn children(e: &Expr) -> Vec<&IdedExpr> {
    match e {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => Vec::new(),
        Expr::Call(c) => c.target.iter().map(|t| t.as_ref()).chain(&c.args).collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m.entries.iter().flat_map(|e| entry(&e.expr)).collect(),
        Expr::Select(s) => vec![&s.operand],
        Expr::Struct(s) => s.entries.iter().flat_map(|e| entry(&e.expr)).collect(),
    }
}

fn entry(e: &EntryExpr) -> Vec<&IdedExpr> {
    match e {
        EntryExpr::StructField(f) => vec![&f.value],
        EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
    }
}

/// Functions and operators whose result is a number, a bool, a duration or a timestamp,
/// whatever their operands: their result bound is a scalar's. Any other call is bounded by
/// the sum of its operands.
const SCALAR_RESULTS: &[&str] = &[
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::SUBSTRACT,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::GREATER_EQUALS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::LESS,
    operators::NEGATE,
    operators::NOT_STRICTLY_FALSE,
    operators::IN,
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "bool",
    "duration",
    "timestamp",
    "hasValue",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
];

/// Functions and operators that do not go over their operands (short-circuit logic, a
/// branch, an index, a length, a wrapper): no charge for their operands' weight. Every other
/// call is charged it, for comparisons, membership tests, concatenations and string searches,
/// which are linear in it.
const CONSTANT_TIME: &[&str] = &[
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::NOT_STRICTLY_FALSE,
    operators::CONDITIONAL,
    operators::INDEX,
    operators::OPT_INDEX,
    operators::OPT_SELECT,
    "size",
    "dyn",
    "type",
    "hasValue",
    "value",
    "orValue",
    "or",
    "of",
    "none",
];

/// Bounds of a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bound {
    /// Length if it is a list or map (0 for scalars).
    len: u64,
    /// Length of any list or map nested inside it, at any level.
    elem: u64,
    /// Elements and bytes in all.
    weight: u64,
    /// Weight of any one element (or entry, or field).
    elem_weight: u64,
}

impl Bound {
    /// A scalar of `weight` bytes.
    fn scalar(weight: u64) -> Self {
        Bound {
            len: 0,
            elem: 0,
            weight: weight.max(1),
            elem_weight: 0,
        }
    }

    /// An element of this value (a comprehension variable, a field, an indexed element).
    fn element(&self) -> Self {
        Bound {
            len: self.elem,
            elem: self.elem,
            weight: self.elem_weight,
            elem_weight: self.elem_weight,
        }
    }
}

/// The bounds of the value at `path` below `node` (`node_path(&["labels", "pairs"])` is
/// `node.labels.pairs`).
fn node_path(path: &[&str]) -> Bound {
    let labels = labels::MAX_LABELS_PER_NODE as u64;
    match path {
        [] => Bound {
            len: SMALL_MESSAGE.len,
            elem: labels,
            weight: NODE_WEIGHT,
            elem_weight: NODE_WEIGHT,
        },
        ["labels"] => Bound {
            len: 1,
            elem: labels,
            weight: NODE_WEIGHT,
            elem_weight: NODE_WEIGHT,
        },
        ["labels", "pairs"] => Bound {
            len: labels,
            elem: 2,
            weight: NODE_WEIGHT,
            elem_weight: PAIR_WEIGHT,
        },
        ["labels", "pairs", ..] => Bound {
            len: 2,
            elem: 2,
            weight: PAIR_WEIGHT,
            elem_weight: PAIR_WEIGHT,
        },
        _ => SMALL_MESSAGE,
    }
}

/// Bounds of the variables in scope; comprehension variables shadow outer ones.
#[derive(Default)]
struct Scope<'a> {
    vars: HashMap<&'a str, Vec<Bound>>,
}

impl<'a> Scope<'a> {
    fn push(&mut self, name: &'a str, bound: Bound) {
        self.vars.entry(name).or_default().push(bound);
    }

    fn pop(&mut self, name: &str) {
        if let Some(v) = self.vars.get_mut(name) {
            v.pop();
        }
    }

    fn get(&self, name: &str) -> Option<Bound> {
        self.vars.get(name).and_then(|v| v.last()).copied()
    }

    /// Whether `name` is the filter's `node` (not shadowed by a comprehension variable).
    fn is_node(&self, name: &str) -> bool {
        name == "node" && self.get(name).is_none()
    }
}

/// What [`estimate`] works out for one expression.
#[derive(Debug, Clone, Copy, Default)]
struct Estimate {
    bound: Bound,
    /// Evaluations of AST nodes (and weight units of linear operations).
    cost: u64,
    /// Comprehension nesting.
    nesting: usize,
}

fn add(a: u64, b: u64) -> u64 {
    a.saturating_add(b)
}

fn mul(a: u64, b: u64) -> u64 {
    a.saturating_mul(b)
}

/// Recursive, but only over an AST whose depth [`measure`] has bounded.
fn estimate<'a>(e: &'a IdedExpr, scope: &mut Scope<'a>) -> Estimate {
    let leaf = |bound| Estimate {
        bound,
        cost: 1,
        nesting: 0,
    };
    match &e.expr {
        Expr::Unspecified => leaf(Bound::scalar(1)),
        Expr::Literal(l) => leaf(Bound::scalar(match l {
            LiteralValue::String(s) => s.inner().len() as u64,
            LiteralValue::Bytes(b) => b.inner().len() as u64,
            _ => 1,
        })),
        Expr::Ident(name) => leaf(if scope.is_node(name) {
            node_path(&[])
        } else {
            // The enum constants are scalars; anything else fails at evaluation.
            scope.get(name).unwrap_or(Bound::scalar(1))
        }),
        Expr::Select(s) => {
            if !s.test
                && let Some(path) = field_path(e)
                && let Some((root, rest)) = path.split_first()
                && scope.is_node(root)
            {
                return Estimate {
                    bound: node_path(rest),
                    cost: path.len() as u64,
                    nesting: 0,
                };
            }
            let inner = estimate(&s.operand, scope);
            Estimate {
                bound: if s.test {
                    Bound::scalar(1)
                } else {
                    inner.bound.element()
                },
                cost: add(inner.cost, 1),
                nesting: inner.nesting,
            }
        }
        Expr::Call(c) => {
            let parts: Vec<Estimate> = c
                .target
                .iter()
                .map(|t| t.as_ref())
                .chain(&c.args)
                .map(|a| estimate(a, scope))
                .collect();
            let operands = Bound {
                len: parts
                    .iter()
                    .fold(0, |acc, p| add(acc, p.bound.len.max(p.bound.elem))),
                elem: parts.iter().map(|p| p.bound.elem).max().unwrap_or(0),
                weight: parts.iter().fold(0, |acc, p| add(acc, p.bound.weight)),
                elem_weight: parts.iter().map(|p| p.bound.elem_weight).max().unwrap_or(0),
            };
            let name = c.func_name.as_str();
            let bound = if SCALAR_RESULTS.contains(&name) {
                Bound::scalar(1)
            } else {
                operands
            };
            let linear = if CONSTANT_TIME.contains(&name) {
                0
            } else {
                operands.weight / WEIGHT_UNIT
            };
            Estimate {
                bound,
                cost: add(parts.iter().fold(1, |acc, p| add(acc, p.cost)), linear),
                nesting: parts.iter().map(|p| p.nesting).max().unwrap_or(0),
            }
        }
        Expr::List(l) => collection(l.elements.iter().collect(), l.elements.len(), scope),
        Expr::Map(m) => collection(
            m.entries.iter().flat_map(|e| entry(&e.expr)).collect(),
            m.entries.len(),
            scope,
        ),
        Expr::Struct(s) => collection(
            s.entries.iter().flat_map(|e| entry(&e.expr)).collect(),
            s.entries.len(),
            scope,
        ),
        Expr::Comprehension(c) => {
            let range = estimate(&c.iter_range, scope);
            let init = estimate(&c.accu_init, scope);
            let n = range.bound.len;
            let element = range.bound.element();
            scope.push(&c.iter_var, element);
            if let Some(v2) = &c.iter_var2 {
                scope.push(v2, element);
            }
            // During the loop the accumulator is bounded by what it ends as: at most one
            // element more per iteration (see the module documentation). Its weight needs
            // the step's, so the step is first estimated with the initial accumulator.
            scope.push(&c.accu_var, init.bound);
            let first_step = estimate(&c.loop_step, scope);
            scope.pop(&c.accu_var);
            let accu = Bound {
                len: add(init.bound.len, n),
                elem: init
                    .bound
                    .elem
                    .max(first_step.bound.elem)
                    .max(first_step.bound.len),
                weight: add(init.bound.weight, mul(n, first_step.bound.weight)),
                elem_weight: init.bound.elem_weight.max(first_step.bound.elem_weight),
            };
            scope.push(&c.accu_var, accu);
            let cond = estimate(&c.loop_cond, scope);
            let step = estimate(&c.loop_step, scope);
            let result = estimate(&c.result, scope);
            scope.pop(&c.accu_var);
            if let Some(v2) = &c.iter_var2 {
                scope.pop(v2);
            }
            scope.pop(&c.iter_var);
            Estimate {
                bound: result.bound,
                cost: add(
                    add(range.cost, init.cost),
                    add(mul(n, add(cond.cost, step.cost)), result.cost),
                ),
                nesting: range
                    .nesting
                    .max(init.nesting)
                    .max(1 + cond.nesting.max(step.nesting))
                    .max(result.nesting),
            }
        }
    }
}

/// `a.b.c` as `["a", "b", "c"]`, if `e` is field reads on an identifier.
fn field_path(e: &IdedExpr) -> Option<Vec<&str>> {
    let mut path = Vec::new();
    let mut e = e;
    loop {
        match &e.expr {
            Expr::Ident(name) => {
                path.push(name.as_str());
                path.reverse();
                return Some(path);
            }
            Expr::Select(s) if !s.test => {
                path.push(s.field.as_str());
                e = &s.operand;
            }
            _ => return None,
        }
    }
}

/// A literal collection of `len` entries built from `parts`.
fn collection<'a>(parts: Vec<&'a IdedExpr>, len: usize, scope: &mut Scope<'a>) -> Estimate {
    let parts: Vec<Estimate> = parts.into_iter().map(|p| estimate(p, scope)).collect();
    Estimate {
        bound: Bound {
            len: len as u64,
            elem: parts
                .iter()
                .map(|p| p.bound.len.max(p.bound.elem))
                .max()
                .unwrap_or(0),
            weight: parts.iter().fold(1, |acc, p| add(acc, p.bound.weight)),
            elem_weight: parts.iter().map(|p| p.bound.weight).max().unwrap_or(0),
        },
        cost: parts.iter().fold(1, |acc, p| add(acc, p.cost)),
        nesting: parts.iter().map(|p| p.nesting).max().unwrap_or(0),
    }
}
