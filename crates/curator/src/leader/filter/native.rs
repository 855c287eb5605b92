//! The common filters evaluated natively: `&&`, `||` and `!` over `node.state` compared with
//! an integer or a state constant, `node.id` compared with a string, `has(node.roles.<role>)`
//! and boolean literals. Those are what operators write (`node.state == NODE_STATE_UP &&
//! has(node.roles.kubernetes_worker)`), and building each node as CEL values to run them
//! cost several times reading and decoding the records. Anything else goes to CEL.
//!
//! The result is CEL's on the same node, errors included: an atom that CEL could not
//! evaluate (a node without roles) is an error, which `&&` and `||` absorb as CEL does when
//! their other side decides, and which otherwise means no match (as [`super::classify`]
//! treats a missing optional field).

use std::collections::HashMap;

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue, operators};
use proto::api;

/// A filter CEL would evaluate the same way.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Native {
    And(Box<Native>, Box<Native>),
    Or(Box<Native>, Box<Native>),
    Not(Box<Native>),
    /// `node.state == n` (or `!=` when `equal` is false).
    State {
        value: i64,
        equal: bool,
    },
    /// `node.id == s` (or `!=`).
    Id {
        value: String,
        equal: bool,
    },
    /// `has(node.roles.<role>)`.
    HasRole(Role),
    Literal(bool),
}

/// A role marker of `node.roles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Worker,
    Consensus,
    Controller,
}

/// The native form of `e`, if it has one; `constants` are the integer constants in scope.
pub(super) fn compile(e: &IdedExpr, constants: &HashMap<String, i64>) -> Option<Native> {
    // Bounded by the filter's depth limit, checked before this runs.
    match &e.expr {
        Expr::Literal(LiteralValue::Boolean(b)) => Some(Native::Literal(*b.inner())),
        Expr::Select(s) if s.test => {
            let Expr::Select(roles) = &s.operand.expr else {
                return None;
            };
            if roles.test || roles.field != "roles" || !is_node(&roles.operand) {
                return None;
            }
            let role = match s.field.as_str() {
                "kubernetes_worker" => Role::Worker,
                "consensus_member" => Role::Consensus,
                "kubernetes_controller" => Role::Controller,
                _ => return None,
            };
            Some(Native::HasRole(role))
        }
        Expr::Call(c) if c.target.is_none() => {
            let arg = |i: usize| c.args.get(i);
            match (c.func_name.as_str(), c.args.len()) {
                (operators::LOGICAL_AND, 2) => Some(Native::And(
                    Box::new(compile(arg(0)?, constants)?),
                    Box::new(compile(arg(1)?, constants)?),
                )),
                (operators::LOGICAL_OR, 2) => Some(Native::Or(
                    Box::new(compile(arg(0)?, constants)?),
                    Box::new(compile(arg(1)?, constants)?),
                )),
                (operators::LOGICAL_NOT, 1) => {
                    Some(Native::Not(Box::new(compile(arg(0)?, constants)?)))
                }
                (operators::EQUALS, 2) => comparison(arg(0)?, arg(1)?, true, constants),
                (operators::NOT_EQUALS, 2) => comparison(arg(0)?, arg(1)?, false, constants),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `node.<field> == value` in either order.
fn comparison(
    a: &IdedExpr,
    b: &IdedExpr,
    equal: bool,
    constants: &HashMap<String, i64>,
) -> Option<Native> {
    let (field, value) = match (node_field(a), node_field(b)) {
        (Some(f), None) => (f, b),
        (None, Some(f)) => (f, a),
        _ => return None,
    };
    match field {
        "state" => {
            let value = match &value.expr {
                Expr::Literal(LiteralValue::Int(i)) => *i.inner(),
                Expr::Ident(name) => *constants.get(name)?,
                _ => return None,
            };
            Some(Native::State { value, equal })
        }
        "id" => match &value.expr {
            Expr::Literal(LiteralValue::String(s)) => Some(Native::Id {
                value: s.inner().to_string(),
                equal,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// `f` if `e` is `node.f` (not a presence test).
fn node_field(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Select(s) if !s.test && is_node(&s.operand) => Some(s.field.as_str()),
        _ => None,
    }
}

fn is_node(e: &IdedExpr) -> bool {
    matches!(&e.expr, Expr::Ident(name) if name == "node")
}

impl Native {
    /// Whether the node matches (an evaluation error is no match, as for CEL).
    pub(super) fn matches(&self, node: &api::Node) -> bool {
        self.eval(node).unwrap_or(false)
    }

    /// CEL's value: `Err` where CEL would fail.
    fn eval(&self, node: &api::Node) -> Result<bool, ()> {
        match self {
            Native::Literal(b) => Ok(*b),
            Native::State { value, equal } => Ok((i64::from(node.state) == *value) == *equal),
            Native::Id { value, equal } => Ok((node.id == *value) == *equal),
            Native::HasRole(role) => {
                let roles = node.roles.as_ref().ok_or(())?;
                Ok(match role {
                    Role::Worker => roles.kubernetes_worker.is_some(),
                    Role::Consensus => roles.consensus_member.is_some(),
                    Role::Controller => roles.kubernetes_controller.is_some(),
                })
            }
            Native::Not(a) => a.eval(node).map(|b| !b),
            // CEL's commutative logic: a deciding side wins over an error on the other.
            Native::And(a, b) => match (a.eval(node), b.eval(node)) {
                (Ok(false), _) | (_, Ok(false)) => Ok(false),
                (Ok(true), Ok(true)) => Ok(true),
                _ => Err(()),
            },
            Native::Or(a, b) => match (a.eval(node), b.eval(node)) {
                (Ok(true), _) | (_, Ok(true)) => Ok(true),
                (Ok(false), Ok(false)) => Ok(false),
                _ => Err(()),
            },
        }
    }
}
