"""``napari-dkan genes describe|coverage|embed``: gene knowledge, texts and embeddings."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_dkan.cli._output import add_json_flag, emit, progress_bar

_SOURCES = ("offline", "ncbi", "llm", "ncbi+llm")


def register(sub: argparse._SubParsersAction) -> None:
    genes = sub.add_parser(
        "genes",
        help="gene knowledge, gene texts and their embeddings",
        description="Gene knowledge for DKAN's gene texts: describe genes, check how well a "
        "panel is known, embed a panel's texts.  Offline by default.",
    )
    gsub = genes.add_subparsers(dest="genes_command", metavar="ACTION", required=True)

    p = gsub.add_parser("describe", help="print the text of one or more genes",
                        description="Print the description of each gene, as the model sees it.")
    p.add_argument("symbols", nargs="+", metavar="SYMBOL")
    _add_text_options(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_describe)

    p = gsub.add_parser(
        "coverage", help="how well the knowledge table knows a panel",
        description="Resolve every gene of a panel file and report the fraction described "
        "(a name and at least one GO term or a location), the missing and the renamed genes.")
    p.add_argument("panel", type=Path, help="panel file, one symbol per line")
    add_json_flag(p)
    p.set_defaults(func=cmd_coverage)

    p = gsub.add_parser(
        "embed", help="embed a panel's gene texts into a safetensors file",
        description="Write one text embedding per gene (panel order) to a safetensors file: "
        "the matrix under 'gene_embeddings', the gene list, encoder and provenance in its "
        "metadata.  Embeddings are cached: a second run loads no model.")
    p.add_argument("panel", type=Path, help="panel file, one symbol per line")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors file")
    p.add_argument("--encoder", default=None,
                   help="Hugging Face name or local folder (default: the packaged "
                   "all-MiniLM-L6-v2; the paper used dmis-lab/biobert-large-cased-v1.1)")
    p.add_argument("--pooling", choices=["mean", "last-token"],
                   help="default: mean for all-MiniLM-L6-v2 (its training), last-token "
                   "otherwise (the paper's)")
    p.add_argument("--texts", type=Path, metavar="TSV",
                   help="use these texts (SYMBOL<TAB>text lines) instead of composing them")
    p.add_argument("--device", default="cpu", help="torch device for the encoder (default cpu)")
    p.add_argument("--batch-size", type=int, default=32)
    _add_text_options(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_embed)


def _add_text_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--disease", metavar="TEXT",
                   help='disease context named in every text, e.g. "HER2-positive breast cancer"')
    p.add_argument("--source", choices=_SOURCES, default="offline",
                   help="offline (default, no network); ncbi: NCBI Gene summaries; llm: the "
                   "offline facts rewritten by a chat model; ncbi+llm: the paper's route")
    p.add_argument("--ncbi-url", metavar="URL", help="E-utilities base URL (default: NCBI's)")
    p.add_argument("--llm-url", metavar="URL",
                   help="OpenAI-compatible endpoint base URL (API key from $OPENAI_API_KEY, or "
                   "the variable named by --llm-key-env)")
    p.add_argument("--llm-model", metavar="NAME", help="model name for the chat endpoint")
    p.add_argument("--llm-key-env", default="OPENAI_API_KEY", metavar="VAR")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per online request")


def _online_settings(args: argparse.Namespace):  # noqa: ANN202
    from napari_dkan.io.errors import DataError
    from napari_dkan.knowledge import LlmSettings, NcbiSettings
    from napari_dkan.knowledge.ncbi import NCBI_EUTILS

    ncbi = NcbiSettings(base_url=args.ncbi_url or NCBI_EUTILS, timeout=args.timeout)
    llm = None
    if args.source in ("llm", "ncbi+llm"):
        if not (args.llm_url and args.llm_model):
            raise DataError(f"--source {args.source} needs --llm-url and --llm-model")
        llm = LlmSettings(base_url=args.llm_url, model=args.llm_model,
                          api_key_env=args.llm_key_env, timeout=args.timeout)
    return ncbi, llm


def _report(texts) -> dict:  # noqa: ANN001
    return {t.gene: {"symbol": t.symbol, "origin": t.origin, "status": t.status,
                     "resolution": t.resolution, "detail": t.detail} for t in texts}


def cmd_describe(args: argparse.Namespace) -> int:
    from napari_dkan.knowledge import gene_texts

    ncbi, llm = _online_settings(args)
    texts = gene_texts(args.symbols, args.source, args.disease, ncbi=ncbi, llm=llm)
    lines = []
    for t in texts:
        flag = "" if t.status in ("ok", "cached") else f"  [{t.status}: {t.detail}]"
        lines.append(f"{t.text}{flag}")
    emit(args, {"genes": [{"gene": t.gene, "symbol": t.symbol, "text": t.text,
                           "origin": t.origin, "status": t.status, "resolution": t.resolution,
                           "detail": t.detail} for t in texts]},
         "\n\n".join(lines))
    return 0


def cmd_coverage(args: argparse.Namespace) -> int:
    from napari_dkan.io.expression import read_panel_file
    from napari_dkan.knowledge import coverage, load_table

    genes = read_panel_file(str(args.panel))
    cov = coverage(genes)
    info = {"panel": str(args.panel), **cov.as_dict(), "knowledge": load_table().summary()}
    lines = [f"{args.panel.name}: {len(cov.described)}/{cov.n_genes} genes described "
             f"({cov.described_fraction:.1%})"]
    if cov.missing:
        lines.append(f"not in the knowledge table ({len(cov.missing)}): {', '.join(cov.missing)}")
    if cov.undescribed:
        lines.append(f"known but undescribed ({len(cov.undescribed)}): "
                     f"{', '.join(cov.undescribed)}")
    if cov.renamed:
        lines.append(f"resolved under another name ({len(cov.renamed)}):")
        lines.extend(f"  {r.note()}" for r in cov.renamed)
    emit(args, info, "\n".join(lines))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from napari_dkan.io.expression import read_panel_file
    from napari_dkan.knowledge import DEFAULT_ENCODER, gene_embeddings

    genes = read_panel_file(str(args.panel))
    ncbi, llm = _online_settings(args)
    start = time.perf_counter()
    with progress_bar("embedding gene texts", unit="gene", enabled=not args.json) as progress:
        emb = gene_embeddings(genes, args.encoder or DEFAULT_ENCODER, args.pooling, args.disease,
                              args.source, texts=args.texts, ncbi=ncbi, llm=llm,
                              device=args.device, batch_size=args.batch_size, progress=progress)
    emb.save(args.output)
    seconds = time.perf_counter() - start
    info = {"output": str(args.output), "n_genes": len(emb.genes), "dim": emb.dim,
            "encoder": emb.encoder, "pooling": emb.pooling, "from_cache": emb.from_cache,
            "seconds": round(seconds, 2), "provenance": emb.provenance,
            "genes": _report(emb.records)}
    fallbacks = [r.gene for r in emb.records if r.fell_back]
    text = (f"{args.output}: {len(emb.genes)} genes × {emb.dim} ({emb.encoder}, {emb.pooling} "
            f"pooling{', from cache' if emb.from_cache else ''}) in {seconds:.1f} s")
    missing = emb.provenance.get("missing") or []
    if missing:
        text += f"\nno knowledge (minimal text) for: {', '.join(missing)}"
    if fallbacks:
        text += f"\noffline text used where the online source failed: {', '.join(fallbacks)}"
    emit(args, info, text)
    return 0
