#!/usr/bin/env python3
"""What PyYAML (yaml.safe_load, as mindformers' MindFormerConfig reads a run YAML) makes of tricky
documents: writes table.json beside this file. Run by hand when cases are added, never by npm test:

    python3 test/launcher/pyyaml/generate.py

The test (test/launcher/config-pyyaml.test.ts) compares msckpt's reading of every document, and
its derived YAML's re-reading, against this table.

Encoding of PyYAML's values in JSON: str, bool, None and ints within 2**53 as themselves; other
ints {"$int": "digits"}; every float {"$float": repr}; datetime.date {"$date": iso};
datetime.datetime {"$datetime": iso}; bytes {"$bytes": base64}; tuples {"$tuple": [...]};
sets {"$set": [...]} (sorted by repr); dicts with only str keys as objects, others
{"$map": [[key, value], ...]}. A document PyYAML refuses is {"$error": exception class name}.
"""
import base64
import datetime
import json
import os
import sys

import yaml

CASES = [
    # booleans: YAML 1.1's words, in the three spellings PyYAML lists (not y/n, not tRUE)
    ('bool words', 'a: yes\nb: Yes\nc: YES\nd: no\ne: No\nf: NO\ng: on\nh: On\ni: ON\nj: off\nk: Off\nl: OFF\n'),
    ('bool true/false', 'a: true\nb: True\nc: TRUE\nd: false\ne: False\nf: FALSE\n'),
    ('not booleans', 'a: y\nb: n\nc: Y\nd: N\ne: tRUE\nf: yES\ng: oN\nh: "yes"\ni: \'True\'\nj: ! yes\nk: Flase\n'),
    # null
    ('nulls', 'a: ~\nb: null\nc: Null\nd: NULL\ne:\nf: nULL\ng: "~"\nh: \'null\'\n'),
    # ints: decimal, underscores, old octal, 0o (a string), binary, hex, sexagesimal
    ('ints decimal', 'a: 0\nb: -0\nc: +7\nd: 1_000\ne: 12345678901234567890\nf: -9007199254740993\ng: 9007199254740991\n'),
    ('ints octal', 'a: 017\nb: -017\nc: 0o17\nd: 08\ne: 0_7\nf: 00\ng: 0777_7\n'),
    ('ints binary hex', 'a: 0b101\nb: -0b1_0\nc: 0x1F\nd: 0xff_ff\ne: 0X1F\nf: 0B11\n'),
    ('ints sexagesimal', 'a: 1:30\nb: -1:30\nc: 190:20:30\nd: 1:60\ne: 01:30\nf: 1:3\n'),
    # floats: a dot is needed, and an exponent needs its sign
    ('floats exponent', 'a: 1e-5\nb: 1.0e-5\nc: 1.0e5\nd: 1.0e+5\ne: 1E+5\nf: 1.E-5\ng: .5e+3\nh: 3e+2\ni: 6.02E+23\n'),
    ('floats plain', 'a: 1.0\nb: -1.5\nc: 1.\nd: .5\ne: +.5\nf: 1_000.5\ng: 0.1\nh: -0.0\ni: 2.50\nj: 1.__\n'),
    ('floats special', 'a: .inf\nb: -.inf\nc: +.Inf\nd: .INF\ne: .nan\nf: .NaN\ng: -.nan\nh: inf\ni: nan\nj: .Nan\n'),
    ('floats sexagesimal', 'a: 1:30.5\nb: -1:30.0\nc: 20:30:15.\n'),
    ('number-like strings', 'a: 1,000\nb: 0x\nc: 1e5\nd: 1.2.3\ne: "1.0"\nf: 12e\ng: 0xG1\nh: 1_\ni: 2024_01\nj: 5%\n'),
    # timestamps
    ('dates', 'a: 2001-12-14\nb: 2002-1-2 10:00:00\nc: 2001-12-14t21:59:43.10-05:00\nd: 2001-12-14 21:59:43.10 -5\ne: 2001-12-15 2:59:43.10\nf: 2001-12-15T02:59:43.1Z\ng: 2001-12-14T21:59:43.1234567\n'),
    ('not dates', 'a: 2001-1-2\nb: 20011214\nc: "2001-12-14"\nd: 2001-12-14x\n'),
    ('invalid date', 'a: 2001-13-45\n'),
    # merge keys, anchors and aliases
    ('merge one', 'base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n'),
    ('merge list, first wins', 'a: &a {x: 1}\nb: &b {x: 2, z: 2}\nd:\n  <<: [*a, *b]\n  w: 0\n'),
    ('merge before key', 'a: &a {x: 1, y: 1}\nd:\n  y: 9\n  <<: *a\n'),
    ('merge nested', 'a: &a {x: 1}\nb: &b\n  <<: *a\n  y: 2\nd:\n  <<: *b\n  z: 3\n'),
    ('merge of a scalar', 'a: &a 1\nd:\n  <<: *a\n'),
    ('anchored scalar', 'a: &n 0x10\nb: *n\nc: &s yes\nd: *s\n'),
    ('lt-lt quoted is a key', 'd:\n  "<<": {x: 1}\n'),
    # "=" is tag:yaml.org,2002:value: a key becomes a string, a value has no constructor
    ('equals key', '=: 1\n'),
    ('equals value', 'a: =\n'),
    ('merge key as a value', 'a: <<\n'),
    ('merge key as an item', '- <<\n'),
    ('two merge keys', '<<: {x: 1}\n<<: {y: 2, x: 0}\n'),
    ('non-specific tag resolves', 'a: ! <<\n'),
    ('non-specific tag on quotes', 'a: ! "017"\nb: ! \nc: !!str\n'),
    ('unhashable key', '? [1, 2]\n: x\n'),
    # duplicate keys: the last one stands
    ('duplicate keys', 'a: 1\nb: 2\na: 3\n'),
    ('duplicate nested', 'p:\n  x: 1\n  x: two\nq: [1]\nq: {r: 1}\n'),
    # keys that are not strings
    ('typed keys', 'yes: a\n1: b\n1.5: c\nnull: d\n0x10: e\n~: f\n'),
    ('on key', 'on: 1\noff: 2\n'),
    # strings, quoting and escapes
    ('quoted forms', 'a: "yes"\nb: \'1e-5\'\nc: "1.0e-5"\nd: "0o17"\ne: "~"\nf: "=="\ng: "2001-12-14"\nh: "1:30"\n'),
    ('escapes', 'a: "tab\\there"\nb: "\\u00e9\\x41"\nc: "line\\nbreak"\nd: \'it\'\'s\'\ne: "\\U0001F600"\nf: "\\x80\\u2028"\ng: "\\0\\a\\b\\e\\f\\r\\v\\N\\_\\L\\P"\n'),
    ('plain with specials', 'a: /path/to/model.ckpt\nb: obs://bucket/x\nc: a:b c\nd: Please input obs url on AICC platform.\ne: x #not a comment\nf: x # a comment\ng: -x\nh: :x\n'),
    ('colon space in a plain value', 'c: a: b c\n'),
    ('block scalars', 'a: |\n  line1\n  line2\nb: >\n  folded\n  text\nc: |-\n  stripped\nd: |+\n  kept\n\ne: 1\n'),
    ('multiline plain', 'a: one\n  two\n  three\nb: "x\n  y"\n'),
    ('empty and spaces', 'a: ""\nb: \' \'\nc:    \nd: "  padded  "\n'),
    # tags
    ('explicit tags', 'a: !!str 123\nb: !!int "017"\nc: !!float "1e5"\nd: !!bool "on"\ne: !!str yes\nf: !!null ""\ng: !!float 3\n'),
    ('binary', 'a: !!binary aGVsbG8=\n'),
    ('set', 'a: !!set {x: null, y: null}\n'),
    ('omap and pairs', 'a: !!omap [{x: 1}, {y: 2}]\nb: !!pairs [{x: 1}, {x: 2}]\n'),
    ('unknown tag', 'a: !foo 1\n'),
    ('python tag', 'a: !!python/name:os.system\n'),
    # structure
    ('flow collections', 'a: {x: 1, y: [1, 2.0, "3"]}\nb: [yes, no, ~, 0o7, 07]\n'),
    ('sequence of scalars', 'a:\n- yes\n- ! "no"\n- 017\n- 1e-5\n- 1.0e-5\n- ~\n- 2001-12-14\n- 1:30\n- ! 0x1f\nb: [on, ! off, =x]\n'),
    ('top-level flow mapping', '{a: yes, b: 1e-5, c: [on, 017], d: {e: ~}}\n'),
    ('flow mappings in a sequence', '- {a: 1.0}\n- [off, {b: 0x1f}]\n- ! {c: d}\n'),
    ('top-level sequence', '- on\n- 0o7\n- 07\n'),
    ('nested list of maps', 'a:\n  - x: 1\n    y: off\n  - z\n'),
    ('document marker', '---\na: 1\n...\n'),
    ('two documents', 'a: 1\n---\nb: 2\n'),
    ('not a mapping', '- 1\n- 2\n'),
    ('scalar document', 'yes\n'),
    ('empty document', ''),
    ('comment only', '# nothing\n'),
    ('tab indentation', 'a:\n\tb: 1\n'),
    ('bad indentation', 'a:\n  b: 1\n c: 2\n'),
    ('unclosed quote', 'a: "x\n'),
    ('crlf line ends', 'a: 1\r\nb: yes\r\n'),
    ('bom', '\ufeffa: 1\n'),
    ('non-printable', 'a: "x\u0080y"\n'),
    ('non-printable plain', 'a: x\u0080y\n'),
    # a run YAML's keys, as mindformers configs write them
    ('run yaml keys', (
        'seed: 0\noutput_dir: \'./output\'\nload_checkpoint: \'\'\nsrc_strategy_path_or_dir: \'\'\n'
        'auto_trans_ckpt: False\nonly_save_strategy: False\nresume_training: False\nuse_parallel: True\n'
        'run_mode: \'train\'\nload_ckpt_format: "safetensors"\nremote_save_url: "Please input obs url on AICC platform."\n'
        'parallel:\n  parallel_mode: 1 # 0-data parallel, 1-semi-auto parallel\n  full_batch: True\n'
        '  strategy_ckpt_save_file: "./ckpt_strategy.ckpt"\nparallel_config:\n  data_parallel: 8\n'
        '  model_parallel: 1\n  pipeline_stage: 1\n  micro_batch_num: 1\n  vocab_emb_dp: True\n'
        'optimizer:\n  learning_rate: 1.e-5\n  eps: 1e-8\n  weight_decay: 0.0\n'
        'lr_schedule:\n  learning_rate: 5.e-5\n  warmup_ratio: 0.03\n'
        'context:\n  max_device_memory: "58GB"\n  affinity_cpu_list: None\n  mode: 0\n'
    )),
    ('parallel modes', 'a: STAND_ALONE\nb: "MANUAL_PARALLEL"\nc: 0\nd: semi_auto_parallel\ne: 1.0\nf: "1"\n'),
    ('booleans in run keys', 'auto_trans_ckpt: yes\nuse_parallel: on\nonly_save_strategy: Off\nresume_training: "True"\n'),
    # the forms msckpt writes into derived YAMLs (double-quoted strings, floats with a dot and signed exponent)
    ('emitter strings', 'a: "yes"\nb: "1e-5"\nc: "=\"\nd: "/path/with: colon #hash"\ne: "\\x80\\x9f\\x7f"\nf: "\\u2028\\ufeff"\ng: "\\t\\n\\r\\\\\\""\nh: ""\ni: "~"\n'),
    ('emitter numbers', 'a: 1.0e-05\nb: 1.0e+21\nc: 2.0\nd: -0.0\ne: .inf\nf: -.inf\ng: .nan\nh: 12345678901234567890\ni: 1.5e+300\nj: 5.0e-324\n'),
    ('emitter collections', 'a: {"x": 1, "y": [True, False, null]}\nb: []\nc: {}\nd: ["1e-5", 1.0e-05]\n'),
    ('emitter dates', 'a: 2001-12-14\nb: 2001-12-14T21:59:43.100000-05:00\nc: 2001-12-14T21:59:43\nd: 2001-12-14T21:59:43+00:00\n'),
]


def encode(v):
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return v if abs(v) <= 2 ** 53 - 1 else {'$int': str(v)}
    if isinstance(v, float):
        return {'$float': repr(v)}
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return {'$bytes': base64.b64encode(v).decode('ascii')}
    if isinstance(v, datetime.datetime):
        return {'$datetime': v.isoformat()}
    if isinstance(v, datetime.date):
        return {'$date': v.isoformat()}
    if isinstance(v, tuple):
        return {'$tuple': [encode(x) for x in v]}
    if isinstance(v, list):
        return [encode(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return {'$set': sorted((encode(x) for x in v), key=repr)}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: encode(x) for k, x in v.items()}
        return {'$map': [[encode(k), encode(x)] for k, x in v.items()]}
    raise TypeError(f'cannot encode {type(v).__name__}')


def main():
    rows = []
    for name, text in CASES:
        try:
            result = encode(yaml.safe_load(text))
        except Exception as exc:  # noqa: BLE001 - the class name is the answer
            result = {'$error': type(exc).__name__}
        rows.append({'name': name, 'yaml': text, 'pyyaml': result})
    out = {
        'generator': 'test/launcher/pyyaml/generate.py',
        'pyyaml': yaml.__version__,
        'python': sys.version.split()[0],
        'loader': 'yaml.safe_load (mindformers MindFormerConfig._file2dict)',
        'cases': rows,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'table.json')
    with open(path, 'w', encoding='utf-8') as fp:
        json.dump(out, fp, indent=1, ensure_ascii=False)
        fp.write('\n')
    print(f'{len(rows)} cases -> {path} (PyYAML {yaml.__version__})')


if __name__ == '__main__':
    main()
