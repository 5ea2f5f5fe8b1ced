//! Line charts for the reports: side-by-side panels, a logarithmic x axis
//! (batch sizes, table rows and byte budgets all span decades) and one line
//! with markers per series.
//!
//! Text is drawn with plotters' pure-Rust `ab_glyph` renderer from a TTF
//! file given at run time, so no fontconfig or freetype is needed.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// One line through `(x, y)` points, joined in the order given.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a figure.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Start the y axis at zero (throughput) instead of at the data's
    /// minimum (AUC).
    pub y_from_zero: bool,
    /// Legend in the lower right corner instead of the upper right (where
    /// the data rises to the right).
    pub legend_at_bottom: bool,
    pub series: Vec<Series>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

const FAMILY: &str = "sans-serif";

/// Registers the TTF font every label is drawn with.
pub fn load_font(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("font {}: {e}", path.display()))?;
    plotters::style::register_font(
        FAMILY,
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| format!("font {}: not a TrueType font", path.display()))
}

fn bounds(values: impl Iterator<Item = f64> + Clone) -> Option<(f64, f64)> {
    let min = values.clone().fold(f64::INFINITY, f64::min);
    let max = values.fold(f64::NEG_INFINITY, f64::max);
    (min.is_finite() && max.is_finite()).then_some((min, max))
}

/// Human number for an axis label: 1.2M, 35k, 0.87.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Draws `panels` side by side into a PNG at `path`.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<(), String> {
    let width = 560 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let points = panel.series.iter().flat_map(|s| s.points.iter().copied());
    let (x0, x1) = bounds(points.clone().map(|p| p.0)).ok_or("a panel without points")?;
    let (y0, y1) = bounds(points.map(|p| p.1)).ok_or("a panel without points")?;
    let pad = (y1 - y0).max(y1.abs() * 0.02).max(1e-9) * 0.08;
    let y0 = if panel.y_from_zero { 0.0 } else { y0 - pad };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), y0..y1 + pad)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&|v| si(*v))
        .y_label_formatter(&|v| si(*v))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, series) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = series.points.clone();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(series.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(if panel.legend_at_bottom {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        })
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(si(16_384.0), "16k");
        assert_eq!(si(2.5e6), "2.5M");
        assert_eq!(si(1e8), "100.0M");
        assert_eq!(si(0.8774), "0.877");
        assert_eq!(si(64.0), "64");
        assert_eq!(si(1.0), "1");
        assert_eq!(si(4_000.0), "4000");
    }
}
