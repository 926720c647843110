//! The statement as a PDF: A4 landscape, the standard Helvetica fonts (nothing embedded),
//! header with the agreement terms, summary, the lines table over as many pages as it needs,
//! credit support, adjustments, totals, and on every page the statement's hash and its link
//! in the chain. Built from the canonical CSV's [`Document`], so the PDF shows exactly the
//! numbers that the hash covers.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

use crate::canonical::{DocLine, Document, Sums};
use ledger::Nanos;

const WIDTH: f32 = 842.0;
const HEIGHT: f32 = 595.0;
const MARGIN: f32 = 36.0;
const BOTTOM: f32 = 64.0;
const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");

/// Helvetica advance widths (1/1000 em) of the characters numbers are made of; others are
/// taken as a digit's width, which only matters for fitting names into a column.
fn char_width(c: char) -> f32 {
    match c {
        '.' | ',' | ' ' => 278.0,
        '-' => 333.0,
        '$' | '0'..='9' => 556.0,
        'i' | 'j' | 'l' => 222.0,
        'f' | 't' | 'I' => 278.0,
        'm' | 'M' | 'W' => 833.0,
        'w' => 722.0,
        _ => 556.0,
    }
}

fn text_width(text: &str, size: f32) -> f32 {
    text.chars().map(char_width).sum::<f32>() * size / 1000.0
}

/// WinAnsi (Windows-1252) bytes of a string: Latin-1 letters as they are, the typographic
/// characters 1252 keeps at 0x80–0x9F at their places, anything else `?`.
fn win_ansi(text: &str) -> Vec<u8> {
    const HIGH: [(char, u8); 27] = [
        ('€', 0x80),
        ('‚', 0x82),
        ('ƒ', 0x83),
        ('„', 0x84),
        ('…', 0x85),
        ('†', 0x86),
        ('‡', 0x87),
        ('ˆ', 0x88),
        ('‰', 0x89),
        ('Š', 0x8A),
        ('‹', 0x8B),
        ('Œ', 0x8C),
        ('Ž', 0x8E),
        ('‘', 0x91),
        ('’', 0x92),
        ('“', 0x93),
        ('”', 0x94),
        ('•', 0x95),
        ('–', 0x96),
        ('—', 0x97),
        ('˜', 0x98),
        ('™', 0x99),
        ('š', 0x9A),
        ('›', 0x9B),
        ('œ', 0x9C),
        ('ž', 0x9E),
        ('Ÿ', 0x9F),
    ];
    text.chars()
        .map(|c| match c as u32 {
            0x20..=0x7E | 0xA0..=0xFF => c as u8,
            _ => HIGH.iter().find(|(h, _)| *h == c).map_or(b'?', |(_, b)| *b),
        })
        .collect()
}

fn fit(text: &str, width: f32, size: f32) -> String {
    if text_width(text, size) <= width {
        return text.to_string();
    }
    let mut out = String::new();
    for c in text.chars() {
        if text_width(&out, size) + char_width(c) * size / 1000.0 + text_width("...", size) > width
        {
            break;
        }
        out.push(c);
    }
    out + "..."
}

struct Page {
    content: Content,
    y: f32,
}

struct Writer {
    pages: Vec<Page>,
    /// Each page of a draft carries a large DRAFT behind its text.
    draft: bool,
}

impl Writer {
    fn page(&mut self) -> &mut Page {
        if self.pages.is_empty() {
            self.new_page();
        }
        let last = self.pages.len() - 1;
        &mut self.pages[last]
    }

    fn new_page(&mut self) {
        let mut content = Content::new();
        if self.draft {
            watermark(&mut content);
        }
        self.pages.push(Page {
            content,
            y: HEIGHT - MARGIN,
        });
    }

    fn text_at(&mut self, x: f32, y: f32, size: f32, bold: bool, text: &str) {
        let c = &mut self.page().content;
        c.begin_text();
        c.set_font(if bold { BOLD } else { REGULAR }, size);
        c.next_line(x, y);
        c.show(Str(&win_ansi(text)));
        c.end_text();
    }

    /// Writes a line of text and moves down.
    fn line(&mut self, size: f32, bold: bool, text: &str) {
        self.room(size * 1.5);
        let y = self.page().y - size;
        self.text_at(MARGIN, y, size, bold, text);
        self.page().y -= size * 1.45;
    }

    fn gap(&mut self, points: f32) {
        self.page().y -= points;
    }

    /// Starts a new page when less than `needed` points are left.
    fn room(&mut self, needed: f32) -> bool {
        if self.page().y - needed < BOTTOM {
            self.new_page();
            return true;
        }
        false
    }

    fn wrapped(&mut self, size: f32, text: &str) {
        let mut current = String::new();
        for word in text.split_whitespace() {
            let candidate = if current.is_empty() {
                word.to_string()
            } else {
                format!("{current} {word}")
            };
            if text_width(&candidate, size) > WIDTH - 2.0 * MARGIN && !current.is_empty() {
                self.line(size, false, &current);
                current = word.to_string();
            } else {
                current = candidate;
            }
        }
        if !current.is_empty() {
            self.line(size, false, &current);
        }
    }

    /// One table row: `(text, width, right-aligned)` cells.
    fn row(&mut self, size: f32, bold: bool, cells: &[(String, f32, bool)]) {
        self.room(size * 1.5);
        let y = self.page().y - size;
        let mut x = MARGIN;
        for (text, width, right) in cells {
            let text = fit(text, width - 4.0, size);
            let at = if *right {
                x + width - 4.0 - text_width(&text, size)
            } else {
                x
            };
            self.text_at(at, y, size, bold, &text);
            x += width;
        }
        self.page().y -= size * 1.5;
    }

    /// A row of a small table: `values` under `columns` (title, width, right-aligned).
    fn table_row<const N: usize>(
        &mut self,
        bold: bool,
        columns: &[(&str, f32, bool); N],
        values: [String; N],
    ) {
        let cells: Vec<(String, f32, bool)> = values
            .into_iter()
            .zip(columns)
            .map(|(v, (_, width, right))| (v, *width, *right))
            .collect();
        self.row(7.5, bold, &cells);
    }

    fn rule(&mut self) {
        let y = self.page().y + 2.0;
        let c = &mut self.page().content;
        c.set_line_width(0.5);
        c.move_to(MARGIN, y);
        c.line_to(WIDTH - MARGIN, y);
        c.stroke();
        self.page().y -= 3.0;
    }
}

fn usd(nanos: i64) -> String {
    Nanos::new(nanos).to_string()
}

fn pct(bps: i64) -> String {
    format!("{}.{:02} %", bps / 100, bps % 100)
}

fn seconds(us: i64) -> String {
    format!("{}.{:03}", us / 1_000_000, (us % 1_000_000) / 1000)
}

const LINE_COLUMNS: [(&str, f32, bool); 12] = [
    ("Month", 40.0, false),
    ("Tenant", 102.0, false),
    ("Model", 80.0, false),
    ("Requests", 44.0, true),
    ("Input tok", 52.0, true),
    ("Output tok", 52.0, true),
    ("Device s", 46.0, true),
    ("Gross", 58.0, true),
    ("Cash", 58.0, true),
    ("Credit support", 64.0, true),
    ("Partner", 58.0, true),
    ("Vendor", 58.0, true),
];
const RECOUPED_COLUMN: (&str, f32, bool) = ("Recouped", 58.0, true);

fn line_cells(first: [String; 3], s: &Sums) -> Vec<(String, f32, bool)> {
    let [month, tenant, model] = first;
    let values = [
        month,
        tenant,
        model,
        s.requests.to_string(),
        s.input_tokens.to_string(),
        s.output_tokens.to_string(),
        seconds(s.device_us),
        usd(s.gross),
        usd(s.cash),
        usd(s.credit_support),
        usd(s.partner_share),
        usd(s.vendor_share),
        usd(s.recouped),
    ];
    LINE_COLUMNS
        .iter()
        .chain(std::iter::once(&RECOUPED_COLUMN))
        .zip(values)
        .map(|((_, w, r), v)| (v, *w, *r))
        .collect()
}

fn table_header(w: &mut Writer) {
    let cells: Vec<(String, f32, bool)> = LINE_COLUMNS
        .iter()
        .chain(std::iter::once(&RECOUPED_COLUMN))
        .map(|(t, wd, r)| (t.to_string(), *wd, *r))
        .collect();
    w.row(7.5, true, &cells);
    w.rule();
}

/// "DRAFT", large, light and slanted across the page, drawn first so the text sits on it.
fn watermark(c: &mut Content) {
    let (sin, cos) = 28f32.to_radians().sin_cos();
    c.save_state();
    c.set_fill_gray(0.88);
    c.begin_text();
    c.set_font(BOLD, 150.0);
    c.set_text_matrix([cos, sin, -sin, cos, 190.0, 120.0]);
    c.show(Str(b"DRAFT"));
    c.end_text();
    c.restore_state();
}

/// How a closed statement was issued: the hash of its canonical CSV and the day it was closed.
#[derive(Debug, Clone, Copy)]
pub struct Issued<'a> {
    pub sha256: &'a str,
    /// `YYYY-MM-DD` (UTC).
    pub date: &'a str,
}

/// Renders the statement: a closed one with how it was issued, a draft (`None`) marked DRAFT on
/// every page.
pub fn render(d: &Document, issued: Option<Issued<'_>>) -> Vec<u8> {
    let mut w = Writer {
        pages: Vec::new(),
        draft: issued.is_none(),
    };
    heading(&mut w, d, issued);
    w.gap(4.0);
    agreement_terms(&mut w, d);
    w.gap(4.0);
    summary(&mut w, d);
    usage_lines(&mut w, d);
    credit_support(&mut w, d);
    w.gap(6.0);
    adjustments(&mut w, d);
    footers(&mut w, d, issued.map(|i| i.sha256));
    assemble(w, d)
}

/// Title, partner, period, status and payee.
fn heading(w: &mut Writer, d: &Document, issued: Option<Issued<'_>>) {
    w.line(16.0, true, "Tokenmill revenue-share statement");
    w.line(11.0, true, &format!("{} - {}", d.partner_name, d.period));
    let status = match (d.number, issued) {
        (Some(n), Some(i)) => format!("Closed statement no. {n}, issued {}", i.date),
        (Some(n), None) => format!("Closed statement no. {n}"),
        _ => "Draft: the figures change until the month is closed".to_string(),
    };
    w.line(
        9.0,
        false,
        &format!(
            "Partner id {}   Period {} to {} (UTC, end exclusive)   {status}",
            d.partner_id, d.period_from, d.period_to
        ),
    );
    w.line(
        9.0,
        false,
        &format!(
            "Payee: {} (partner id {}), for the amount payable below",
            d.partner_name, d.partner_id
        ),
    );
}

/// Each agreement version in force during the month, in words.
fn agreement_terms(w: &mut Writer, d: &Document) {
    w.line(10.0, true, "Agreement terms");
    if d.agreements.is_empty() {
        w.line(
            9.0,
            false,
            "No agreement was in force: usage revenue stays with the vendor.",
        );
    }
    for a in &d.agreements {
        let to = if a.to.is_empty() {
            "open-ended".to_string()
        } else {
            format!("to {}", a.to)
        };
        let recoup = match (a.recoup_cost, a.recoup_vendor_share_bps) {
            (Some(cost), Some(v)) => format!(
                "; recoupment of {} at a vendor share of {} of cash usage until recouped",
                usd(cost),
                pct(v)
            ),
            _ => String::new(),
        };
        w.wrapped(
            9.0,
            &format!(
                "Version {} from {} {to}: partner share {} of cash usage; credit support reimbursed at {}{recoup}.",
                a.version,
                a.from,
                pct(a.partner_share_bps),
                pct(a.credit_reimbursement_bps)
            ),
        );
    }
}

/// The month's totals, recoupment and the amount payable.
fn summary(w: &mut Writer, d: &Document) {
    w.line(10.0, true, "Summary");
    let [cost, before, during, after, remaining] = d.recoupment;
    let summary = [
        ("Gross usage at list price", usd(d.total.gross)),
        ("Paid in cash", usd(d.total.cash)),
        ("Paid by credit support", usd(d.total.credit_support)),
        ("Partner share of usage", usd(d.total.partner_share)),
        ("Vendor share of usage", usd(d.total.vendor_share)),
        (
            "Adjustments (gross / partner / vendor)",
            format!(
                "{} / {} / {}",
                usd(d.adjustments_total[0]),
                usd(d.adjustments_total[1]),
                usd(d.adjustments_total[2])
            ),
        ),
        ("Gross after adjustments", usd(d.summary[0])),
        ("Vendor total", usd(d.summary[2])),
        (
            "Recoupment (cost / before / this period / after / remaining)",
            format!(
                "{} / {} / {} / {} / {}",
                usd(cost),
                usd(before),
                usd(during),
                usd(after),
                usd(remaining)
            ),
        ),
        (
            "Device time (cost to serve)",
            format!("{} s", seconds(d.total.device_us)),
        ),
    ];
    for (label, value) in summary {
        w.row(
            9.0,
            false,
            &[(label.to_string(), 300.0, false), (value, 400.0, false)],
        );
    }
    w.row(
        10.0,
        true,
        &[
            ("Payable to the partner".to_string(), 300.0, false),
            (usd(d.payable), 400.0, false),
        ],
    );
    w.gap(2.0);
    w.wrapped(7.5, &format!("Rounding: {}", d.rounding));
    w.gap(6.0);
}

/// One line per usage month, tenant and model, and their total.
fn usage_lines(w: &mut Writer, d: &Document) {
    w.room(40.0);
    w.line(10.0, true, "Usage by tenant and model");
    table_header(w);
    if d.lines.is_empty() {
        w.line(8.0, false, "No usage in this period.");
    }
    for l in &d.lines {
        if w.room(12.0) {
            table_header(w);
        }
        let DocLine {
            usage_period,
            tenant_name,
            tenant_id,
            model,
            sums,
        } = l;
        let tenant = if tenant_name.is_empty() {
            tenant_id.clone()
        } else {
            tenant_name.clone()
        };
        w.row(
            7.5,
            false,
            &line_cells([usage_period.clone(), tenant, model.clone()], sums),
        );
    }
    w.rule();
    w.row(
        7.5,
        true,
        &line_cells(["Total".into(), String::new(), String::new()], &d.total),
    );
}

/// Credit support by sponsor, when there is any.
fn credit_support(w: &mut Writer, d: &Document) {
    if !d.support.is_empty() {
        w.gap(6.0);
        w.room(40.0);
        w.line(10.0, true, "Credit support by sponsor");
        let columns = [
            ("Month", 40.0, false),
            ("Tenant", 160.0, false),
            ("Model", 100.0, false),
            ("Sponsor", 180.0, false),
            ("Amount", 80.0, true),
            ("Partner share", 80.0, true),
        ];
        w.table_row(true, &columns, columns.map(|(t, ..)| t.to_string()));
        for s in &d.support {
            let sponsor = if s.sponsor_name.is_empty() {
                s.sponsor_id.clone()
            } else {
                s.sponsor_name.clone()
            };
            let tenant = d
                .lines
                .iter()
                .find(|l| l.tenant_id == s.tenant_id)
                .map_or(s.tenant_id.clone(), |l| l.tenant_name.clone());
            let values = [
                s.usage_period.clone(),
                tenant,
                s.model.clone(),
                sponsor,
                usd(s.amount),
                usd(s.partner_share),
            ];
            w.table_row(false, &columns, values);
        }
    }
}

/// Credits, corrections and refunds taken into the month.
fn adjustments(w: &mut Writer, d: &Document) {
    w.room(40.0);
    w.line(10.0, true, "Adjustments");
    if d.adjustments.is_empty() {
        w.line(8.0, false, "None.");
    } else {
        let columns = [
            ("Date", 56.0, false),
            ("Kind", 60.0, false),
            ("By", 120.0, false),
            ("Reason", 250.0, false),
            ("Gross", 75.0, true),
            ("Partner", 75.0, true),
            ("Vendor", 75.0, true),
        ];
        w.table_row(true, &columns, columns.map(|(t, ..)| t.to_string()));
        for a in &d.adjustments {
            let values = [
                a.date.clone(),
                a.kind.clone(),
                a.created_by.clone(),
                a.reason.replace('\n', " "),
                usd(a.gross),
                usd(a.partner),
                usd(a.vendor),
            ];
            w.table_row(false, &columns, values);
        }
    }
}

/// Footers, now that the page count is known: the hashes of this statement and the previous,
/// and the page number.
fn footers(w: &mut Writer, d: &Document, sha256: Option<&str>) {
    let count = w.pages.len();
    let hash = match sha256 {
        Some(h) => format!("SHA-256 of the canonical CSV: {h}"),
        None => "Draft: no hash until the month is closed".to_string(),
    };
    let previous = format!(
        "Previous statement: {}",
        d.previous_sha256
            .as_deref()
            .unwrap_or("none (first in the chain)")
    );
    for (i, page) in w.pages.iter_mut().enumerate() {
        let c = &mut page.content;
        for (y, text) in [(MARGIN + 10.0, hash.as_str()), (MARGIN, previous.as_str())] {
            c.begin_text();
            c.set_font(REGULAR, 7.0);
            c.next_line(MARGIN, y);
            c.show(Str(&win_ansi(text)));
            c.end_text();
        }
        let label = format!("Page {} of {count}", i + 1);
        c.begin_text();
        c.set_font(REGULAR, 7.0);
        c.next_line(WIDTH - MARGIN - text_width(&label, 7.0), MARGIN);
        c.show(Str(label.as_bytes()));
        c.end_text();
    }
}

/// The PDF file: catalog, page tree, the two standard fonts, document info, and each page
/// with its content stream.
fn assemble(w: Writer, d: &Document) -> Vec<u8> {
    let count = w.pages.len();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let first_page = 6;
    let page_ids: Vec<Ref> = (0..count)
        .map(|i| Ref::new(first_page + 2 * i as i32))
        .collect();
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(count as i32);
    for (font, name) in [(regular, "Helvetica"), (bold, "Helvetica-Bold")] {
        pdf.type1_font(font)
            .base_font(Name(name.as_bytes()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    pdf.document_info(info)
        .title(pdf_writer::TextStr(&format!(
            "Tokenmill statement {} {}",
            d.partner_name, d.period
        )))
        .producer(pdf_writer::TextStr("Tokenmill"));
    for (i, page) in w.pages.into_iter().enumerate() {
        let id = page_ids[i];
        let contents = Ref::new(id.get() + 1);
        let mut p = pdf.page(id);
        p.parent(tree)
            .media_box(Rect::new(0.0, 0.0, WIDTH, HEIGHT))
            .contents(contents);
        p.resources()
            .fonts()
            .pair(REGULAR, regular)
            .pair(BOLD, bold);
        p.finish();
        pdf.stream(contents, &page.content.finish());
    }
    pdf.finish()
}
