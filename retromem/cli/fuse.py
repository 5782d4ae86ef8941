"""``retromem fuse``: TREC run files of any systems fused into one (reciprocal rank fusion or score interpolation)."""

from __future__ import annotations

from pathlib import Path

from retromem.cli.common import add_command, check_output_file


def add_parser(sub) -> None:
    from retromem.retrieve.fusion import METHODS, NORMALIZATIONS, RRF_K

    p = add_command(sub, "fuse", run, help="fuse TREC run files (RRF or score interpolation)",
                    description="Fuse two or more TREC run files (from retromem or any other system) into one: "
                                "reciprocal rank fusion, 1 / (k + rank) summed over the runs, or per-query normalised "
                                "scores interpolated (--alpha weighs the first of two runs, --weights one weight per "
                                "run). With --corpus, documents a run holds that the corpus lacks are dropped, and "
                                "how many is reported.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="TREC run files (.gz allowed)")
    p.add_argument("--output", required=True, type=Path, help="fused TREC run file to write (.gz compresses)")
    p.add_argument("--method", choices=METHODS, default="rrf", help="rrf, or interpolate")
    p.add_argument("--rrf-k", type=int, default=RRF_K, help="rrf: the constant k of 1 / (k + rank)")
    p.add_argument("--alpha", type=float, default=None, help="interpolate two runs: the first run's weight (the "
                   "second gets 1 - alpha); choose it on training queries, not on the queries you evaluate")
    p.add_argument("--weights", default=None, help="interpolate: one weight per run, comma-separated")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="minmax", help="interpolate: per-query "
                   "score normalisation")
    p.add_argument("--top-k", type=int, default=1000, help="documents kept per query")
    p.add_argument("--corpus", default=None, help="drop (and count) documents not in this corpus (a BEIR name or "
                   "folder, corpus.jsonl, KILT source)")
    p.add_argument("--tag", default="retromem-fused", help="the run tag written in the last column")


def run(args) -> int:
    from retromem.errors import ConfigError
    from retromem.retrieve.fusion import FusionReport, fuse
    from retromem.retrieve.runfile import read_trec_run, write_trec_run

    check_output_file(args.output)
    if len(args.runs) < 2:
        raise ConfigError(f"fuse needs two or more run files, got {len(args.runs)}")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.method == "rrf" and (args.alpha is not None or args.weights is not None):
        raise ConfigError("--alpha and --weights weigh --method interpolate; RRF takes --rrf-k")
    if args.method == "interpolate":
        if args.alpha is not None and args.weights is not None:
            raise ConfigError("give --alpha (two runs) or --weights (one per run), not both")
        if args.weights is not None:
            try:
                alpha = [float(w) for w in args.weights.split(",")]
            except ValueError as err:
                raise ConfigError(f"--weights must be comma-separated numbers, got {args.weights!r}") from err
        elif args.alpha is not None:
            alpha = args.alpha
        else:
            raise ConfigError("--method interpolate needs --alpha (two runs) or --weights (one per run)")
    else:
        alpha = 0.5
    known = None
    if args.corpus is not None:
        from retromem.data.corpora import open_corpus

        known = {p.id for p in open_corpus(args.corpus).passages()}
    runs = [read_trec_run(path) for path in args.runs]
    report = FusionReport()
    fused = fuse(runs, args.method, k=args.top_k, alpha=alpha, normalization=args.normalization, rrf_k=args.rrf_k,
                 known=known, report=report)
    write_trec_run(fused, args.output, tag=args.tag)
    print(f"fused {len(runs)} runs ({args.method}) over {len(fused)} queries -> {args.output}")
    if known is not None:
        if report.dropped:
            per_run = ", ".join(f"{path.name}: {n}" for path, n in zip(args.runs, report.unknown))
            print(f"dropped {report.dropped} results naming documents not in {args.corpus} ({per_run}; e.g. "
                  f"{', '.join(report.examples[:3])})")
        else:
            print(f"every document is in {args.corpus}")
    return 0
