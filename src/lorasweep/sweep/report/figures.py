"""The report's plotly figures. Optuna's own plotly plots where they fit (optimisation history, parameter
importances, Pareto front); the rest with plotly's graph objects, from the collected ReportData."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .collect import COSTS, ReportData, TrialRow
from .numbers import integer_axis, log_axis, log_ticks, short


@dataclass
class Figure:
    key: str  # the div id on the page
    title: str
    figure: go.Figure
    note: str = ""


def build_figures(study: optuna.Study, data: ReportData) -> list[Figure]:
    out = []
    for make in (_parallel, _curves, _costs, _pareto, _rank_per_targets, _importances, _history):
        try:
            figure = make(study, data)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. too few distinct trials to rank
            warnings.warn(f"report: {make.__name__.strip('_')} left out: {exc}", stacklevel=2)
            continue
        if figure is not None:
            figure.figure.update_layout(
                template="plotly_white",
                title=None,  # the page has the headings
                margin={"t": 40, "l": 60, "r": 20, "b": 50},
            )
            out.append(figure)
    return out


def _target(study: optuna.Study):
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def _category_axis(values: list, choices: list) -> tuple[list, dict]:
    """Category labels in the spec's order (the ones trials took) -> (positions, plotly dimension ticks)."""
    taken = {str(v) for v in values}
    labels = [str(c) for c in choices if str(c) in taken]
    return [labels.index(str(v)) for v in values], {"tickvals": list(range(len(labels))), "ticktext": labels}


def _parallel(study, data: ReportData) -> Figure | None:
    """Every searched parameter and every objective, one line per finished trial, colored by the first."""
    rows = data.finished
    if not rows:
        return None
    dims = []
    for param in data.spec.params:
        values = [r.params.get(param.key) for r in rows]
        if param.type == "categorical":
            positions, ticks = _category_axis(values, param.choices)
            if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in param.choices):
                order = sorted({v for v in values})  # numeric choices in numeric order
                positions = [order.index(v) for v in values]
                ticks = {"tickvals": list(range(len(order))), "ticktext": [str(v) for v in order]}
            dims.append({"label": param.key, "values": positions, **ticks})
        elif param.log:  # plotted as log10, labelled in the parameter's own numbers over the searched range
            ticks = log_ticks(param.low, param.high)
            dims.append(
                {
                    "label": f"{param.key} (log)",
                    "values": [math.log10(v) for v in values],
                    "range": [math.log10(param.low), math.log10(param.high)],
                    "tickvals": [math.log10(t) for t in ticks],
                    "ticktext": [short(t) for t in ticks],
                }
            )
        else:
            dims.append({"label": param.key, "values": values, "tickformat": "~.3g"})
    for objective in data.spec.objectives:
        dims.append({"label": objective.metric, "values": [r.objectives[objective.metric] for r in rows]})
    color = [r.objectives[data.metric] for r in rows]
    reverse = data.spec.objectives[0].direction == "minimize"
    figure = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={
                "color": color,
                "colorscale": "Viridis",
                "reversescale": reverse,
                "showscale": True,
                "colorbar": {"title": {"text": data.metric}},
            },
        )
    )
    figure.update_layout(height=420)
    return Figure(
        "parallel",
        "Parameters and objectives (parallel coordinates)",
        figure,
        "One line per finished trial; drag along an axis to filter.",
    )


def _curves(study, data: ReportData) -> Figure | None:
    """The intermediate values (eval metric against step) of every trial; pruned ones end in a cross. Trials
    whose curves are identical share one line named after all of them: drawn apart, the last would hide the
    others. Lines are a little transparent, so curves that meet for a while show both colours."""
    rows = [r for r in data.rows if r.curve]
    if not rows:
        return None
    groups: dict[tuple, list[TrialRow]] = {}
    for r in sorted(rows, key=lambda r: r.number):
        groups.setdefault((tuple(map(tuple, r.curve)), r.state == "PRUNED"), []).append(r)
    figure = go.Figure()
    for (curve, pruned), group in groups.items():
        steps, values = [p[0] for p in curve], [p[1] for p in curve]
        numbers = ", ".join(str(r.number) for r in group)
        name = (f"trials {numbers} (identical)" if len(group) > 1 else f"trial {numbers}") + (
            " (pruned)" if pruned else ""
        )
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=name,
                opacity=0.8,
                line={"dash": "dot" if pruned else "solid", "width": 2 + len(group)},
                marker={
                    "symbol": ["circle"] * (len(steps) - 1) + ["x" if pruned else "circle"],
                    "size": [6] * (len(steps) - 1) + [12 if pruned else 6],
                },
                hovertext=["; ".join(f"trial {r.number}: {r.status}" for r in group)] * len(steps),
            )
        )
    figure.update_layout(xaxis_title="step", yaxis_title=data.metric, height=420)
    figure.update_xaxes(**integer_axis(max(p[0] for r in rows for p in r.curve)))
    return Figure(
        "curves",
        "Learning curves (intermediate values)",
        figure,
        "Dotted lines ending in a cross: trials pruned at that step. Trials with identical curves share "
        "one line (named after all of them).",
    )


# Each cost as plotted: bytes as MiB, the trainable fraction as a percentage (as the trial table shows it).
_COST_SCALE = {"params/trainable_fraction": 100, "memory/optimizer_state_bytes": 2**-20, "memory/peak_bytes": 2**-20}


def _costs(study, data: ReportData) -> Figure | None:
    """The first objective against trainable fraction, optimizer state and peak memory."""
    rows = [r for r in data.finished if any(r.metrics.get(m) is not None for m in COSTS)]
    metrics = [
        m
        for m in ("params/trainable_fraction", "memory/optimizer_state_bytes", "memory/peak_bytes")
        if any(r.metrics.get(m) is not None for r in rows)
    ]
    if not rows or not metrics:
        return None
    figure = make_subplots(
        rows=1, cols=len(metrics), shared_yaxes=True, subplot_titles=[COSTS[m].replace(" bytes", "") for m in metrics]
    )
    for i, metric in enumerate(metrics, start=1):
        for front, name in ((False, "trial"), (True, "Pareto front" if len(data.directions) > 1 else "best")):
            group = [r for r in rows if (r.number in data.pareto) == front and r.metrics.get(metric) is not None]
            if not group:
                continue
            figure.add_trace(
                go.Scatter(
                    x=[r.metrics[metric] * _COST_SCALE[metric] for r in group],
                    y=[r.objectives[data.metric] for r in group],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=i == 1,
                    marker={
                        "size": 11 if front else 8,
                        "color": "crimson" if front else "steelblue",
                        "symbol": "star" if front else "circle",
                    },
                    text=[
                        f"trial {r.number}: " + ", ".join(f"{k}={short(v)}" for k, v in r.params.items()) for r in group
                    ],
                    hovertemplate="%{text}<br>%{x:.3~g}<br>" + data.metric + "=%{y}<extra></extra>",
                ),
                row=1,
                col=i,
            )
        scaled = [r.metrics[metric] * _COST_SCALE[metric] for r in rows if r.metrics.get(metric) is not None]
        axis = log_axis(scaled) if metric != "memory/peak_bytes" else {"type": "linear"}  # decades labelled whole
        figure.update_xaxes(
            **axis, row=1, col=i, title_text="MiB" if metric.startswith("memory/") else "% of all parameters"
        )
    figure.update_yaxes(title_text=data.metric, row=1, col=1)
    figure.update_layout(height=420)
    return Figure(
        "costs",
        f"{data.metric} against memory",
        figure,
        "Trainable fraction and optimizer state on log scales; the "
        + ("Pareto-front" if len(data.directions) > 1 else "best")
        + " trials starred.",
    )


def _pareto(study, data: ReportData) -> Figure | None:
    if len(data.directions) < 2 or not data.finished:
        return None
    names = [o.metric for o in data.spec.objectives]
    return Figure("pareto", "Pareto front", optuna.visualization.plot_pareto_front(study, target_names=names))


def _rank_per_targets(study, data: ReportData) -> Figure | None:
    """The first objective against rank, one line per target set (best per point)."""
    rows = [r for r in data.finished if r.params.get("lora.rank") is not None]
    if not rows:
        return None
    minimize = data.spec.objectives[0].direction == "minimize"
    groups: dict[str, dict] = {}
    for r in rows:
        rank, value = r.params["lora.rank"], r.objectives[data.metric]
        best = groups.setdefault(str(r.params.get("lora.targets", "(fixed)")), {})
        if rank not in best or (value < best[rank] if minimize else value > best[rank]):
            best[rank] = value
    figure = go.Figure()
    for name, points in groups.items():
        ranks = sorted(points)
        figure.add_trace(
            go.Scatter(x=ranks, y=[points[k] for k in ranks], mode="lines+markers", name=f"targets={name}")
        )
    figure.update_xaxes(type="log", title_text="LoRA rank r", tickvals=sorted({r.params["lora.rank"] for r in rows}))
    figure.update_layout(yaxis_title=data.metric, height=420)
    return Figure("rank", f"{data.metric} against rank per target set", figure, "Best trial per point.")


def _importances(study, data: ReportData) -> Figure | None:
    rows = data.finished
    if len(rows) < 2 or len({tuple(sorted(map(str, r.params.items()))) for r in rows}) < 2:
        return None
    figure = optuna.visualization.plot_param_importances(study, target=_target(study), target_name=data.metric)
    return Figure(
        "importances", "Parameter importances", figure, f"Optuna's default importance evaluator, for {data.metric}."
    )


def _history(study, data: ReportData) -> Figure | None:
    if not data.finished:
        return None
    figure = optuna.visualization.plot_optimization_history(study, target=_target(study), target_name=data.metric)
    figure.update_xaxes(**integer_axis(max(r.number for r in data.rows)))  # no tick between two trials
    return Figure("history", "Optimisation history", figure)
