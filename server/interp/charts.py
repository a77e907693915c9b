# The `chart` of a matplotlib figure's result (sbxd sends this file between mux.py and
# kernel_python.py): what was plotted, read from the figure's artists, in the shape E2B's code
# interpreter gives and Cloudflare's Sandbox SDK passes through as Result.chart.
#
#   line, scatter     title, x_label, y_label, x_unit, y_unit, x_ticks, x_tick_labels, x_scale,
#                     y_ticks, y_tick_labels, y_scale; elements: [{label, points: [[x, y]...]}]
#   bar               title, x/y labels and units; elements: [{label, group, value}]
#   pie               title; elements: [{label, angle, radius}]
#   box_and_whisker   title, x/y labels and units; elements: [{label, min, first_quartile,
#                     median, third_quartile, max, outliers}]
#   superchart        title (the figure's suptitle); elements: one chart per axes with data
#
# An axes is of a type when everything it plots is of that kind (text, legends and reference
# lines such as axhline aside); anything else makes it "unknown", and a figure whose charts
# are all unknown has no chart. For bars and box plots, x_label and y_label name the category
# axis and the value axis, whichever way the plot is turned.
#
# Box plots leave only lines and patches behind, which cannot be told from a line plot with
# certainty; so Axes.bxp (what boxplot() and seaborn draw with) is wrapped once matplotlib.axes
# is imported, to note each box plot's statistics and artists on its axes.
#
# Everything here is JSON-ready: numbers are finite floats or ints (NaN and infinities are
# null), dates are ISO 8601 strings, categories are their names. A figure of more than
# POINTS_MAX values has no chart (its result must stay well below the 32 MiB that sbxd takes
# in one message, and a million points take a second to read); stderr says so.
import functools
import math
import numbers
import re
import sys

POINTS_MAX = 200000


class TooMuchData(Exception):
    pass


class Budget:
    """Counts the values a figure's chart holds."""

    def __init__(self):
        self.used = 0

    def take(self, n):
        self.used += n
        if self.used > POINTS_MAX:
            raise TooMuchData()


def record_boxplots(axes_class):
    """Makes axes_class.bxp note what it drew on the axes (see the top)."""
    real_bxp = axes_class.bxp

    @functools.wraps(real_bxp)
    def bxp(self, bxpstats, *args, **kwargs):
        bxpstats = list(bxpstats)
        artists = real_bxp(self, bxpstats, *args, **kwargs)
        self._sbx_boxplots = getattr(self, '_sbx_boxplots', []) + [(bxpstats, artists)]
        return artists
    axes_class.bxp = bxp


def figure_chart(fig):
    """The chart of a matplotlib figure, or None when it fits no type."""
    budget = Budget()
    try:
        charts = [axes_chart(ax, budget) for ax in fig.axes if ax.has_data()]
    except TooMuchData:
        sys.stderr.write('sbx: a figure plots more than %d values, too many for a chart: its '
                         'result has only its images\n' % POINTS_MAX)
        return None
    if not charts or all(c['type'] == 'unknown' for c in charts):
        return None
    if len(charts) == 1:
        return charts[0]
    if hasattr(fig, 'get_suptitle'):
        title = fig.get_suptitle()
    else:
        title = fig._suptitle.get_text() if fig._suptitle else None
    return {'type': 'superchart', 'title': title or None, 'elements': charts}


# ---- values ----

def number(x):
    """A finite number as an int or a float, else None."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(x) if isinstance(x, numbers.Integral) else f


def value(x):
    """One plotted value as JSON: a number, an ISO 8601 date, a category's name."""
    import datetime
    import numpy
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, (datetime.date, datetime.time)):
        return x.isoformat()
    if isinstance(x, numpy.datetime64):
        return None if numpy.isnat(x) else str(numpy.datetime_as_string(x, unit='s'))
    if isinstance(x, numbers.Number):
        return number(x)
    return str(x)


def values(data):
    """Plotted values as JSON values, fast for numeric arrays (a million points take a
    fraction of a second)."""
    import numpy
    arr = numpy.ma.asarray(data)
    mask = numpy.ma.getmaskarray(arr)
    arr = numpy.ma.getdata(arr)
    if arr.dtype.kind in 'iu':
        out = arr.tolist()
    elif arr.dtype.kind == 'f':
        out = arr.tolist()
        if not numpy.isfinite(arr).all():
            out = [x if math.isfinite(x) else None for x in out]
    elif arr.dtype.kind == 'M':
        out = [None if s == 'NaT' else s
               for s in numpy.datetime_as_string(arr, unit='s').tolist()]
    else:
        out = [value(x) for x in arr.tolist()]
    if mask.any():
        out = [None if m else x for x, m in zip(out, mask.tolist())]
    return out


# ---- axes ----

def axis_scale(axis, scale):
    """linear, log, ... as matplotlib names them, or datetime / categorical by the units."""
    from matplotlib import category, dates
    conv = axis.get_converter() if hasattr(axis, 'get_converter') else axis.converter
    if isinstance(conv, category.StrCategoryConverter):
        return 'categorical'
    date_converters = (dates.DateConverter, dates.ConciseDateConverter,
                       getattr(dates, '_SwitchableDateConverter', dates.DateConverter))
    if isinstance(conv, date_converters):
        return 'datetime'
    return scale


def tick_text(s):
    """A tick label as read, without mathtext's $\\mathdefault{...}$ wrapping."""
    s = str(s)      # a FixedFormatter's labels may be anything
    m = re.fullmatch(r'\$\\mathdefault\{(.*)\}\$', s)
    return m.group(1) if m else s


def ticks(axis, scale):
    """The axis' major ticks in its view, and their labels (no drawing needed)."""
    from matplotlib import dates
    locs = list(axis.get_majorticklocs())
    labels = axis.get_major_formatter().format_ticks(locs) if locs else []
    lo, hi = sorted(axis.get_view_interval())
    slack = (hi - lo) * 1e-10
    shown = [(loc, label) for loc, label in zip(locs, labels) if lo - slack <= loc <= hi + slack]
    if scale == 'datetime':
        at = [dates.num2date(loc).isoformat() for loc, _ in shown]
    else:
        # without the locator's float noise (1.2000000000000002)
        at = [number(float('%.12g' % loc)) for loc, _ in shown]
    return at, [tick_text(label) for _, label in shown]


def position_label(axis, marks, lo, hi):
    """What a bar or box spanning lo..hi stands for on its category axis, whose ticks(axis,
    'linear') are marks: the label of the tick nearest its centre within its span (grouped
    bars sit beside their tick), else its centre."""
    from matplotlib import dates
    pos = (lo + hi) / 2
    slack = (abs(hi - lo) or 1.0) * 1e-9
    inside = [(abs(loc - pos), label) for loc, label in zip(*marks)
              if label and min(lo, hi) - slack <= loc <= max(lo, hi) + slack]
    if inside:
        return min(inside)[1]
    if axis_scale(axis, 'linear') == 'datetime':
        return dates.num2date(pos).isoformat()
    return '%g' % pos


def unit(label):
    """"Time (s)" and "Length [m]" have the units s and m."""
    m = re.search(r'\s\((.*?)\)|\[(.*?)\]', label or '')
    return (m.group(1) if m.group(1) is not None else m.group(2)) if m else None


def base(ax, kind):
    title = ax.get_title() or ax.get_title(loc='left') or ax.get_title(loc='right')
    return {'type': kind, 'title': title or None}


def with_labels(chart, ax, turned=False):
    x, y = ax.get_xlabel() or None, ax.get_ylabel() or None
    if turned:
        x, y = y, x
    chart.update(x_label=x, y_label=y, x_unit=unit(x), y_unit=unit(y))
    return chart


def series_label(artist, kind, i):
    label = artist.get_label()
    return label if label and not label.startswith('_') else '%s %d' % (kind, i)


# ---- what an axes plots ----

def classify(ax):
    """The chart type of ax and what it is made of: (type, lines, scatters, bars, wedges,
    boxes), with bars [(container, group number)] and boxes [(stats, median line)]."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.legend import Legend
    from matplotlib.patches import Shadow, Wedge

    lines, patches = list(ax.lines), list(ax.patches)
    present = {id(a) for a in lines + patches}
    boxes, box_parts = [], set()
    for stats, artists in getattr(ax, '_sbx_boxplots', ()):
        medians = artists.get('medians', [])
        if not medians or id(medians[0]) not in present:
            continue    # cleared since
        boxes += list(zip(stats, medians))
        box_parts |= {id(a) for group in artists.values() for a in group}
    bars, bar_parts, ignored = [], set(), set()
    for container in ax.containers:
        if isinstance(container, BarContainer):
            bars.append((container, len(bars)))
            bar_parts |= {id(p) for p in container.patches}
            if container.errorbar is not None:
                data_line, caps, cols = container.errorbar.lines
                ignored |= {id(a) for a in (data_line,) + tuple(caps) + tuple(cols)}

    kinds = set()
    plain = []
    for line in lines:
        if id(line) in box_parts:
            kinds.add('box')
        elif id(line) not in ignored and line.get_transform() is ax.transData:
            plain.append(line)      # not axhline and the like, which span the axes
            kinds.add('line')
    scatters = []
    for c in ax.collections:
        if id(c) in ignored:
            continue
        if isinstance(c, PathCollection):
            scatters.append(c)
            kinds.add('scatter')
        else:
            kinds.add('other')
    wedges = []
    for p in patches:
        if id(p) in bar_parts:
            kinds.add('bar')
        elif id(p) in box_parts:
            kinds.add('box')
        elif isinstance(p, Wedge):
            wedges.append(p)
            kinds.add('pie')
        elif not isinstance(p, Shadow):
            kinds.add('other')
    if ax.images or ax.tables or [a for a in ax.artists if not isinstance(a, Legend)]:
        kinds.add('other')
    kind = {'line': 'line', 'scatter': 'scatter', 'bar': 'bar', 'pie': 'pie',
            'box': 'box_and_whisker'}.get(kinds.pop()) if len(kinds) == 1 else None
    return kind or 'unknown', plain, scatters, bars, wedges, boxes


def axes_chart(ax, budget):
    kind, lines, scatters, bars, wedges, boxes = classify(ax)
    if kind in ('line', 'scatter'):
        budget.take(sum(len(line.get_xdata()) for line in lines) +
                    sum(len(c.get_offsets()) for c in scatters))
        return point_chart(ax, kind, lines, scatters)
    if kind == 'bar':
        budget.take(sum(len(c.patches) for c, _ in bars))
        return bar_chart(ax, bars)
    if kind == 'pie':
        budget.take(len(wedges))
        return pie_chart(ax, wedges)
    if kind == 'box_and_whisker':
        budget.take(sum(1 + len(stats.get('fliers', ())) for stats, _ in boxes))
        return box_chart(ax, boxes)
    return dict(base(ax, 'unknown'), elements=[])


def point_chart(ax, kind, lines, scatters):
    chart = with_labels(base(ax, kind), ax)
    for name, axis, scale in (('x', ax.xaxis, ax.get_xscale()), ('y', ax.yaxis, ax.get_yscale())):
        scale = axis_scale(axis, scale)
        at, labels = ticks(axis, scale)
        chart.update({name + '_ticks': at, name + '_tick_labels': labels,
                      name + '_scale': scale})
    elements = chart['elements'] = []
    for i, line in enumerate(lines):
        points = zip(values(line.get_xdata()), values(line.get_ydata()))
        elements.append({'label': series_label(line, 'Line', i),
                         'points': [list(p) for p in points]})
    for i, c in enumerate(scatters):
        offsets = c.get_offsets()
        xs, ys = offset_values(ax.xaxis, offsets[:, 0]), offset_values(ax.yaxis, offsets[:, 1])
        elements.append({'label': series_label(c, 'Series', i),
                         'points': [list(p) for p in zip(xs, ys)]})
    return chart


def offset_values(axis, nums):
    """A scatter's offsets are in axis units: dates and categories come back as such."""
    from matplotlib import dates
    scale = axis_scale(axis, 'linear')
    out = values(nums)
    if scale == 'datetime':
        return [dates.num2date(x).isoformat() if x is not None else None for x in out]
    if scale == 'categorical':
        names = axis.get_major_formatter().format_ticks(
            [x if x is not None else 0 for x in out])
        return [n if x is not None else None for n, x in zip(names, out)]
    return out


def bar_chart(ax, bars):
    turned = any(getattr(c, 'orientation', None) == 'horizontal' for c, _ in bars)
    chart = with_labels(base(ax, 'bar'), ax, turned)
    elements = chart['elements'] = []
    for container, n in bars:
        group = series_label(container, 'Group', n)
        horizontal = getattr(container, 'orientation', None) == 'horizontal'
        axis = ax.yaxis if horizontal else ax.xaxis
        rects = list(container.patches)
        spans = [(r.get_y(), r.get_y() + r.get_height()) if horizontal else
                 (r.get_x(), r.get_x() + r.get_width()) for r in rects]
        # a histogram's bars touch: ticks at their edges are not theirs, their centres name
        # them
        touching = len(spans) > 1 and all(
            math.isclose(a[1], b[0], rel_tol=1e-9, abs_tol=1e-12)
            for a, b in zip(spans, spans[1:]))
        marks = ticks(axis, 'linear') if not touching else ([], [])
        data = getattr(container, 'datavalues', None)
        if data is None:
            data = [r.get_width() if horizontal else r.get_height() for r in rects]
        for (lo, hi), v in zip(spans, values(data)):
            elements.append({'label': position_label(axis, marks, lo, hi), 'group': group,
                             'value': v})
    return chart


def pie_chart(ax, wedges):
    chart = base(ax, 'pie')
    chart['elements'] = [{'label': w.get_label() if not w.get_label().startswith('_') else '',
                          'angle': float('%.6g' % abs(w.theta2 - w.theta1)),
                          'radius': number(w.r)} for w in wedges]
    return chart


def box_chart(ax, boxes):
    vertical = [len(set(m.get_ydata())) == 1 for _, m in boxes]
    turned = not all(vertical)
    chart = with_labels(base(ax, 'box_and_whisker'), ax, turned)
    elements = chart['elements'] = []
    for (stats, median), upright in zip(boxes, vertical):
        span = median.get_xdata() if upright else median.get_ydata()
        lo, hi = float(min(span)), float(max(span))
        label = stats.get('label')
        if label is None:
            axis = ax.xaxis if upright else ax.yaxis
            label = position_label(axis, ticks(axis, 'linear'), lo, hi)
        elements.append({'label': str(label), 'min': value(stats['whislo']),
                         'first_quartile': value(stats['q1']), 'median': value(stats['med']),
                         'third_quartile': value(stats['q3']), 'max': value(stats['whishi']),
                         'outliers': values(stats.get('fliers', []))})
    return chart
