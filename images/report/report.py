"""HyperBench report image: one self-contained HTML file for a run, or a comparison of runs.

Run mode (no /job/input/runs/ directory), inputs read-only:
  /job/input/metrics.json      from the eval image
  /job/input/per_sample.jsonl  from the eval image
  /job/input/predictions.jsonl merged model predictions
  /job/input/run.json          run facts: summary keys (model, image_digest, dataset,
                               manifest_sha256, params, prompt, ...) and timings
                               (sync_s, inference_s, container_s, evaluation_s,
                               throughput_samples_per_s, gpu_seconds)
  /data                        the dataset (images for the gallery)
Comparison mode (the worker mounts /job/input/runs/): two or more runs on the
same dataset version, /job/input/runs/<k>/{metrics.json,per_sample.jsonl,
predictions.jsonl,run.json}; run directories sort by name (numbers
numerically), the first is the baseline A. See README.md.
Output:
  /job/output/report.html      inline CSS, inline SVG charts, images as data: URIs

No network, no external resource: every piece of text from a model or a run is
escaped with html.escape (predictions are untrusted).
HB_DATA_DIR, HB_JOB_DIR, HB_INPUT_DIR and HB_OUTPUT_DIR move the paths (tests).

The code is the hb_report package beside this file (its __init__ maps the modules);
hb_stats and hb_io come from the eval image and sit beside it in the image.
"""

from hb_report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
