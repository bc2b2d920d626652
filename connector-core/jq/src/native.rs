//! A native evaluator for the simplest jq programs: field paths, object construction,
//! arithmetic and comparisons of numbers and text, `select`, pipes. Reshaping a record is
//! mostly this, and jaq's interpreter (converting each value into its own representation and
//! back) costs several times the work itself.
//!
//! It only ever gives what jaq gives: a program it cannot parse is left to jaq entirely, and a
//! value it was not written for (arithmetic on text, a field of an array, an integer division)
//! makes it answer [`Unsupported`], and jaq runs that record. A differential test holds it to
//! jaq's outputs.

use serde_json::{Map, Number, Value};
use std::cmp::Ordering;

/// This record needs jaq.
#[derive(Debug, PartialEq)]
pub(super) struct Unsupported;

/// A parsed program of the supported subset.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    /// `.`
    Identity,
    /// `.a.b`: fields in order.
    Path(Vec<String>),
    /// `a | b`
    Pipe(Box<Expr>, Box<Expr>),
    /// `{k: v, …}` in order.
    Object(Vec<(String, Expr)>),
    /// A literal: text, `true`, `false`, `null`.
    Literal(Value),
    Arith(Arith, Box<Expr>, Box<Expr>),
    Compare(Compare, Box<Expr>, Box<Expr>),
    /// `select(e)`: the input when `e` is truthy, else no output.
    Select(Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Expr {
    /// The program's output on `input`: `Ok(None)` for no output.
    pub fn eval(&self, input: &Value) -> Result<Option<Value>, Unsupported> {
        Ok(match self {
            Expr::Identity => Some(input.clone()),
            Expr::Path(fields) => Some(path(input, fields)?.clone()),
            Expr::Pipe(a, b) => match a.eval(input)? {
                Some(v) => b.eval(&v)?,
                None => None,
            },
            Expr::Object(entries) => {
                let mut map = Map::with_capacity(entries.len());
                for (key, expr) in entries {
                    map.insert(key.clone(), expr.one(input)?);
                }
                Some(Value::Object(map))
            }
            Expr::Literal(v) => Some(v.clone()),
            Expr::Arith(op, a, b) => Some(arith(*op, &a.one(input)?, &b.one(input)?)?),
            Expr::Compare(op, a, b) => {
                let order = compare(&a.one(input)?, &b.one(input)?)?;
                Some(Value::Bool(match op {
                    Compare::Eq => order == Ordering::Equal,
                    Compare::Ne => order != Ordering::Equal,
                    Compare::Lt => order == Ordering::Less,
                    Compare::Le => order != Ordering::Greater,
                    Compare::Gt => order == Ordering::Greater,
                    Compare::Ge => order != Ordering::Less,
                }))
            }
            Expr::Select(condition) => {
                let keep = !matches!(condition.one(input)?, Value::Null | Value::Bool(false));
                keep.then(|| input.clone())
            }
        })
    }

    /// The one output of a sub-expression (the parser only puts `select` where none is fine).
    fn one(&self, input: &Value) -> Result<Value, Unsupported> {
        self.eval(input)?.ok_or(Unsupported)
    }
}

/// `.a.b` of `input`: null through nulls and missing fields, as jq.
fn path<'v>(input: &'v Value, fields: &[String]) -> Result<&'v Value, Unsupported> {
    let mut at = input;
    for field in fields {
        at = match at {
            Value::Object(map) => sluice_api::record::field(map, field).unwrap_or(&Value::Null),
            Value::Null => &Value::Null,
            _ => return Err(Unsupported),
        };
    }
    Ok(at)
}

/// Arithmetic on two numbers, as jaq: integers stay integers for `+ - *` (overflow is left to
/// jaq), anything with a float is a float; what is not a finite number is left to jaq.
fn arith(op: Arith, a: &Value, b: &Value) -> Result<Value, Unsupported> {
    let (Value::Number(x), Value::Number(y)) = (a, b) else {
        return Err(Unsupported);
    };
    if let (Some(i), Some(j)) = (x.as_i64(), y.as_i64()) {
        let result = match op {
            Arith::Add => i.checked_add(j),
            Arith::Sub => i.checked_sub(j),
            Arith::Mul => i.checked_mul(j),
            Arith::Div => None,
        };
        return result.map(Value::from).ok_or(Unsupported);
    }
    if !(x.is_f64() || y.is_f64()) {
        return Err(Unsupported); // u64 beyond i64
    }
    let (Some(x), Some(y)) = (x.as_f64(), y.as_f64()) else {
        return Err(Unsupported);
    };
    let result = match op {
        Arith::Add => x + y,
        Arith::Sub => x - y,
        Arith::Mul => x * y,
        Arith::Div => x / y,
    };
    if y == 0.0 && op == Arith::Div {
        return Err(Unsupported);
    }
    Number::from_f64(result)
        .map(Value::Number)
        .ok_or(Unsupported)
}

/// jq's order of scalars: null < false < true < numbers < text; arrays and objects are left to
/// jaq.
fn compare(a: &Value, b: &Value) -> Result<Ordering, Unsupported> {
    fn rank(v: &Value) -> Result<u8, Unsupported> {
        Ok(match v {
            Value::Null => 0,
            Value::Bool(false) => 1,
            Value::Bool(true) => 2,
            Value::Number(_) => 3,
            Value::String(_) => 4,
            Value::Array(_) | Value::Object(_) => return Err(Unsupported),
        })
    }
    let order = rank(a)?.cmp(&rank(b)?);
    if order != Ordering::Equal {
        return Ok(order);
    }
    Ok(match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i.cmp(&j),
            _ if x.is_f64() || y.is_f64() => {
                let (Some(x), Some(y)) = (x.as_f64(), y.as_f64()) else {
                    return Err(Unsupported);
                };
                x.partial_cmp(&y).ok_or(Unsupported)?
            }
            _ => return Err(Unsupported),
        },
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => Ordering::Equal,
    })
}

/// Parses `code` if it is all of the supported subset.
pub(super) fn parse(code: &str) -> Option<Expr> {
    let tokens = tokens(code)?;
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser.pipe()?;
    (parser.at == parser.tokens.len()).then_some(expr)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// `.`
    Dot,
    /// `.name`
    Field(String),
    Ident(String),
    Str(String),
    Punct(&'static str),
}

fn tokens(code: &str) -> Option<Vec<Token>> {
    let bytes = code.as_bytes();
    let ident = |from: usize| {
        let mut end = from;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        end
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'.' {
            let next = bytes.get(i + 1).copied();
            if next.is_some_and(|n| n.is_ascii_alphabetic() || n == b'_') {
                // `.a .b`: whether that is one path is jaq's to say.
                if i > 0
                    && bytes[i - 1].is_ascii_whitespace()
                    && matches!(out.last(), Some(Token::Field(_)))
                {
                    return None;
                }
                let end = ident(i + 1);
                out.push(Token::Field(code[i + 1..end].to_string()));
                i = end;
            } else if next
                .is_some_and(|n| n.is_ascii_alphanumeric() || n == b'.' || n == b'[' || n == b'"')
            {
                return None; // `.1`, `..`, `.[`, `."a"`
            } else {
                out.push(Token::Dot);
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let end = ident(i);
            // `a::b` (modules) and anything else after a name than these: not ours.
            out.push(Token::Ident(code[i..end].to_string()));
            i = end;
        } else if c == b'"' {
            let mut text = String::new();
            let mut j = i + 1;
            loop {
                match *bytes.get(j)? {
                    b'"' => break,
                    b'\\' => {
                        text.push(match *bytes.get(j + 1)? {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'n' => '\n',
                            b't' => '\t',
                            b'r' => '\r',
                            _ => return None, // `\(…)` interpolation, `\u`
                        });
                        j += 2;
                    }
                    _ => {
                        let ch = code[j..].chars().next()?;
                        text.push(ch);
                        j += ch.len_utf8();
                    }
                }
            }
            out.push(Token::Str(text));
            i = j + 1;
        } else {
            const PUNCT: [&str; 16] = [
                ">=", "<=", "==", "!=", "{", "}", "(", ")", ",", ":", "|", "+", "-", "*", "/", ">",
            ];
            let p = PUNCT
                .iter()
                .chain(&["<"])
                .find(|p| code[i..].starts_with(**p))?;
            // `|=`, `//`, `+=`, `-=`, …: assignments and alternatives are not ours.
            if matches!(*p, "|" | "+" | "-" | "*" | "/")
                && matches!(bytes.get(i + 1), Some(b'=') | Some(b'/'))
            {
                return None;
            }
            out.push(Token::Punct(p));
            i += p.len();
        }
    }
    Some(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Some(Token::Punct(p)) if *p == punct) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// stage ('|' stage)*
    fn pipe(&mut self) -> Option<Expr> {
        let mut expr = self.stage()?;
        while self.eat("|") {
            expr = Expr::Pipe(Box::new(expr), Box::new(self.stage()?));
        }
        Some(expr)
    }

    /// `select(compare)` or compare
    fn stage(&mut self) -> Option<Expr> {
        if self.peek() == Some(&Token::Ident("select".into()))
            && self.tokens.get(self.at + 1) == Some(&Token::Punct("("))
        {
            self.at += 2;
            let condition = self.compare()?;
            if !self.eat(")") {
                return None;
            }
            return Some(Expr::Select(Box::new(condition)));
        }
        self.compare()
    }

    /// sum (op sum)?: comparisons do not chain in jq.
    fn compare(&mut self) -> Option<Expr> {
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Token::Punct("==")) => Compare::Eq,
            Some(Token::Punct("!=")) => Compare::Ne,
            Some(Token::Punct("<")) => Compare::Lt,
            Some(Token::Punct("<=")) => Compare::Le,
            Some(Token::Punct(">")) => Compare::Gt,
            Some(Token::Punct(">=")) => Compare::Ge,
            _ => return Some(left),
        };
        self.at += 1;
        let right = self.sum()?;
        if matches!(
            self.peek(),
            Some(Token::Punct("==" | "!=" | "<" | "<=" | ">" | ">="))
        ) {
            return None;
        }
        Some(Expr::Compare(op, Box::new(left), Box::new(right)))
    }

    fn sum(&mut self) -> Option<Expr> {
        let mut expr = self.product()?;
        loop {
            let op = match self.peek() {
                Some(Token::Punct("+")) => Arith::Add,
                Some(Token::Punct("-")) => Arith::Sub,
                _ => return Some(expr),
            };
            self.at += 1;
            expr = Expr::Arith(op, Box::new(expr), Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Option<Expr> {
        let mut expr = self.term()?;
        loop {
            let op = match self.peek() {
                Some(Token::Punct("*")) => Arith::Mul,
                Some(Token::Punct("/")) => Arith::Div,
                _ => return Some(expr),
            };
            self.at += 1;
            expr = Expr::Arith(op, Box::new(expr), Box::new(self.term()?));
        }
    }

    /// `.`, `.a.b`, `(pipe)`, a literal, an object; nothing may follow a term but an operator.
    fn term(&mut self) -> Option<Expr> {
        let token = self.peek()?.clone();
        self.at += 1;
        let expr = match token {
            Token::Dot => Expr::Identity,
            Token::Field(first) => {
                let mut fields = vec![first];
                while let Some(Token::Field(next)) = self.peek() {
                    fields.push(next.clone());
                    self.at += 1;
                }
                Expr::Path(fields)
            }
            Token::Str(text) => Expr::Literal(Value::String(text)),
            Token::Ident(name) => match name.as_str() {
                "true" => Expr::Literal(Value::Bool(true)),
                "false" => Expr::Literal(Value::Bool(false)),
                "null" => Expr::Literal(Value::Null),
                _ => return None,
            },
            Token::Punct("(") => {
                let inner = self.pipe()?;
                if !self.eat(")") {
                    return None;
                }
                inner
            }
            Token::Punct("{") => self.object()?,
            Token::Punct(_) => return None,
        };
        // Postfix (`.a[0]`, `(…).b`, `f?`) is not ours: the tokenizer refuses `[` and `?`, and a
        // field after a non-path term is refused here.
        if matches!(self.peek(), Some(Token::Field(_) | Token::Dot)) {
            return None;
        }
        Some(expr)
    }

    /// After `{`: entries `name`, `name: term`, `"text": term`, separated by commas.
    fn object(&mut self) -> Option<Expr> {
        let mut entries = Vec::new();
        if self.eat("}") {
            return Some(Expr::Object(entries));
        }
        loop {
            let (key, shorthand) = match self.peek()?.clone() {
                Token::Ident(name) => (name, true),
                Token::Str(text) => (text, false),
                _ => return None,
            };
            self.at += 1;
            let value = if self.eat(":") {
                self.term()?
            } else if shorthand {
                Expr::Path(vec![key.clone()])
            } else {
                return None; // `{"a"}` is jq's shorthand too, but rare: left to jaq
            };
            entries.push((key, value));
            if self.eat("}") {
                return Some(Expr::Object(entries));
            }
            if !self.eat(",") {
                return None;
            }
        }
    }
}
