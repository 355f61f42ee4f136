// A tiny renderer for the subset of Helm template syntax that charts/thinpool-csi uses. No helm
// binary runs on our machines, so this renders the chart for `deploy/` and for the drift tests.
//
// Supported (and nothing else, on purpose; the chart README lists the same subset):
//   {{ .Values.a.b }}  {{ .Release.Name }}  {{ .Release.Namespace }}  {{ .Chart.Name }}
//   {{ .Chart.Version }}  {{ .Chart.AppVersion }}  {{ $.Values.x }} (root inside range/with)  {{ . }}
//   {{- if X }} … {{- else if Y }} … {{- else }} … {{- end }}
//   {{- range .Values.list }} … {{ . }} … {{- end }}     {{- with X }} … {{- end }}
//   functions: default, quote, toYaml, nindent, indent, not, and, or, eq, ne, b64enc, printf (%s %d only)
//   pipelines (`X | f a`), parentheses, string/number/bool literals, {{/* comments */}}
//   {{- and -}} trim markers.
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

export interface RenderContext {
  Values: Record<string, unknown>;
  Release: { Name: string; Namespace: string; Service: string };
  Chart: { Name: string; Version: string; AppVersion: string };
}

type Node =
  | { kind: 'text'; text: string }
  | { kind: 'out'; expr: string }
  | { kind: 'if'; branches: { cond: string | null; body: Node[] }[] }
  | { kind: 'range' | 'with'; expr: string; body: Node[]; otherwise: Node[] };

interface Token {
  kind: 'text' | 'action';
  text: string;
}

function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  let at = 0;
  while (at < source.length) {
    const open = source.indexOf('{{', at);
    if (open < 0) {
      tokens.push({ kind: 'text', text: source.slice(at) });
      break;
    }
    let text = source.slice(at, open);
    const close = source.indexOf('}}', open);
    if (close < 0) throw new Error(`unclosed {{ at offset ${open}`);
    let inner = source.slice(open + 2, close);
    if (inner.startsWith('-')) {
      text = text.replace(/\s+$/, '');
      inner = inner.slice(1);
    }
    let next = close + 2;
    if (inner.endsWith('-')) {
      inner = inner.slice(0, -1);
      while (next < source.length && /\s/.test(source[next])) next++;
    }
    if (text) tokens.push({ kind: 'text', text });
    inner = inner.trim();
    if (!(inner.startsWith('/*') && inner.endsWith('*/'))) tokens.push({ kind: 'action', text: inner });
    at = next;
  }
  return tokens;
}

function parse(tokens: Token[]): Node[] {
  let i = 0;
  // Parses until one of `stops` (an action keyword); returns the nodes and the stop it met.
  function block(stops: string[]): { nodes: Node[]; stop: string } {
    const nodes: Node[] = [];
    while (i < tokens.length) {
      const t = tokens[i++];
      if (t.kind === 'text') {
        nodes.push({ kind: 'text', text: t.text });
        continue;
      }
      const word = t.text.split(/\s+/)[0];
      if (stops.includes(word)) return { nodes, stop: t.text };
      if (word === 'if') {
        const branches: { cond: string | null; body: Node[] }[] = [];
        let cond: string | null = t.text.slice(2).trim();
        for (;;) {
          const { nodes: body, stop } = block(['else', 'end']);
          branches.push({ cond, body });
          if (stop === 'end') break;
          const rest = stop.slice(4).trim();
          cond = rest.startsWith('if ') ? rest.slice(3).trim() : null;
          if (cond === null) {
            const last = block(['end']);
            branches.push({ cond: null, body: last.nodes });
            break;
          }
        }
        nodes.push({ kind: 'if', branches });
      } else if (word === 'range' || word === 'with') {
        const expr = t.text.slice(word.length).trim();
        if (expr.includes(':=')) throw new Error(`variables are not supported: {{ ${t.text} }}`);
        const first = block(['else', 'end']);
        const otherwise = first.stop === 'end' ? [] : block(['end']).nodes;
        nodes.push({ kind: word, expr, body: first.nodes, otherwise });
      } else if (['end', 'else', 'define', 'template', 'include', 'block'].includes(word)) {
        throw new Error(`unsupported or unbalanced action {{ ${t.text} }}`);
      } else {
        nodes.push({ kind: 'out', expr: t.text });
      }
    }
    if (stops.length) throw new Error(`missing {{ end }} (wanted one of ${stops.join(', ')})`);
    return { nodes, stop: '' };
  }
  return block([]).nodes;
}

// ---- expressions ----

type Lexeme = { kind: 'str' | 'num' | 'word' | 'path' | 'pipe' | 'lp' | 'rp'; text: string };

function lex(expr: string): Lexeme[] {
  const out: Lexeme[] = [];
  const re = /\s*(?:("(?:[^"\\]|\\.)*")|(\d+(?:\.\d+)?)|(\|)|(\()|(\))|([$.][\w.$]*)|([A-Za-z_]\w*))/y;
  let at = 0;
  while (at < expr.length) {
    if (/^\s*$/.test(expr.slice(at))) break;
    re.lastIndex = at;
    const m = re.exec(expr);
    if (!m) throw new Error(`cannot read expression ${JSON.stringify(expr)} at ${at}`);
    at = re.lastIndex;
    if (m[1]) out.push({ kind: 'str', text: JSON.parse(m[1]) as string });
    else if (m[2]) out.push({ kind: 'num', text: m[2] });
    else if (m[3]) out.push({ kind: 'pipe', text: '|' });
    else if (m[4]) out.push({ kind: 'lp', text: '(' });
    else if (m[5]) out.push({ kind: 'rp', text: ')' });
    else if (m[6]) out.push({ kind: 'path', text: m[6] });
    else out.push({ kind: 'word', text: m[7] });
  }
  return out;
}

export function truthy(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v as object).length > 0;
  return true;
}

function toYaml(v: unknown): string {
  if (v === undefined || v === null) return 'null';
  return YAML.stringify(v, { lineWidth: 0 }).replace(/\n$/, '');
}

function indentLines(n: number, s: string): string {
  const pad = ' '.repeat(n);
  return s
    .split('\n')
    .map((line) => pad + line)
    .join('\n');
}

function str(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (typeof v === 'object') throw new Error(`cannot print a ${Array.isArray(v) ? 'list' : 'map'} here`);
  return String(v);
}

const FUNCTIONS: Record<string, (...args: unknown[]) => unknown> = {
  default: (fallback, value) => (truthy(value) ? value : fallback),
  quote: (v) => JSON.stringify(str(v)),
  toYaml: (v) => toYaml(v),
  nindent: (n, s) => '\n' + indentLines(Number(n), str(s)),
  indent: (n, s) => indentLines(Number(n), str(s)),
  not: (v) => !truthy(v),
  and: (...vs) => vs.every(truthy),
  or: (...vs) => vs.some(truthy),
  eq: (a, b) => a === b,
  ne: (a, b) => a !== b,
  b64enc: (v) => Buffer.from(str(v)).toString('base64'),
  printf: (format, ...args) => {
    let k = 0;
    return str(format).replace(/%[sd]/g, () => str(args[k++]));
  },
};

class Evaluator {
  constructor(private readonly root: RenderContext) {}

  lookup(pathText: string, dot: unknown): unknown {
    let base: unknown;
    let rest: string;
    if (pathText.startsWith('$')) {
      base = this.root;
      rest = pathText.slice(1);
    } else {
      base = dot;
      rest = pathText;
    }
    if (rest === '.' || rest === '') return base;
    for (const key of rest.replace(/^\./, '').split('.')) {
      if (base === undefined || base === null) return undefined;
      if (typeof base !== 'object') throw new Error(`${pathText}: ${key} of a ${typeof base}`);
      base = (base as Record<string, unknown>)[key];
    }
    return base;
  }

  eval(expr: string, dot: unknown): unknown {
    const lexemes = lex(expr);
    let at = 0;
    const operand = (): unknown => {
      const l = lexemes[at++];
      if (!l) throw new Error(`${expr}: missing operand`);
      if (l.kind === 'str') return l.text;
      if (l.kind === 'num') return Number(l.text);
      if (l.kind === 'path') return this.lookup(l.text, dot);
      if (l.kind === 'lp') {
        const v = pipeline();
        if (lexemes[at++]?.kind !== 'rp') throw new Error(`${expr}: missing )`);
        return v;
      }
      if (l.kind === 'word' && (l.text === 'true' || l.text === 'false')) return l.text === 'true';
      if (l.kind === 'word' && (l.text === 'nil' || l.text === 'null')) return null;
      if (l.kind === 'word') return call(l.text, []);
      throw new Error(`${expr}: unexpected ${l.text}`);
    };
    const call = (name: string, piped: unknown[]): unknown => {
      const fn = FUNCTIONS[name];
      if (!fn) throw new Error(`unsupported function ${name} in ${JSON.stringify(expr)}`);
      const args: unknown[] = [];
      while (at < lexemes.length && lexemes[at].kind !== 'pipe' && lexemes[at].kind !== 'rp') args.push(operand());
      return fn(...args, ...piped);
    };
    const command = (piped: unknown[] | null): unknown => {
      const l = lexemes[at];
      if (l?.kind === 'word' && !['true', 'false', 'nil', 'null'].includes(l.text)) {
        at++;
        return call(l.text, piped ?? []);
      }
      if (piped) throw new Error(`${expr}: only a function can follow |`);
      return operand();
    };
    const pipeline = (): unknown => {
      let value = command(null);
      while (lexemes[at]?.kind === 'pipe') {
        at++;
        value = command([value]);
      }
      return value;
    };
    const value = pipeline();
    if (at !== lexemes.length) throw new Error(`${expr}: unexpected ${lexemes[at].text}`);
    return value;
  }

  run(nodes: Node[], dot: unknown): string {
    let out = '';
    for (const node of nodes) {
      if (node.kind === 'text') out += node.text;
      else if (node.kind === 'out') out += str(this.eval(node.expr, dot));
      else if (node.kind === 'if') {
        const branch = node.branches.find((b) => b.cond === null || truthy(this.eval(b.cond, dot)));
        if (branch) out += this.run(branch.body, dot);
      } else if (node.kind === 'with') {
        const v = this.eval(node.expr, dot);
        out += truthy(v) ? this.run(node.body, v) : this.run(node.otherwise, dot);
      } else {
        const v = this.eval(node.expr, dot);
        const items = Array.isArray(v) ? v : truthy(v) ? Object.values(v as object) : [];
        if (!items.length) out += this.run(node.otherwise, dot);
        for (const item of items) out += this.run(node.body, item);
      }
    }
    return out;
  }
}

export function renderTemplate(source: string, context: RenderContext): string {
  return new Evaluator(context).run(parse(tokenize(source)), context);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Helm's value merge: maps merge key by key, everything else is replaced. */
export function mergeValues(base: unknown, override: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(override)) return override === undefined ? base : override;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(override)) out[k] = mergeValues(base[k], v);
  return out;
}

export interface RenderOptions {
  releaseName?: string;
  namespace?: string;
  values?: Record<string, unknown>;
}

export interface RenderedChart {
  /** Template file name (relative to templates/) → rendered text. */
  files: Map<string, string>;
  notes: string;
  context: RenderContext;
}

export function renderChart(chartDir: string, options: RenderOptions = {}): RenderedChart {
  const chart = YAML.parse(fs.readFileSync(path.join(chartDir, 'Chart.yaml'), 'utf8')) as Record<string, string>;
  const defaults = YAML.parse(fs.readFileSync(path.join(chartDir, 'values.yaml'), 'utf8')) as Record<
    string,
    unknown
  >;
  const context: RenderContext = {
    Values: mergeValues(defaults, options.values ?? {}) as Record<string, unknown>,
    Release: {
      Name: options.releaseName ?? 'thinpool-csi',
      Namespace: options.namespace ?? 'thinpool-csi',
      Service: 'Helm',
    },
    Chart: { Name: chart.name, Version: chart.version, AppVersion: chart.appVersion },
  };
  const files = new Map<string, string>();
  let notes = '';
  const dir = path.join(chartDir, 'templates');
  for (const name of fs.readdirSync(dir).sort()) {
    if (name.startsWith('_')) continue;
    const text = renderTemplate(fs.readFileSync(path.join(dir, name), 'utf8'), context);
    if (name === 'NOTES.txt') notes = text;
    else files.set(name, text);
  }
  return { files, notes, context };
}

/** Every object of the rendered chart, in template-file order (empty documents dropped). */
export function chartObjects(rendered: RenderedChart): Record<string, unknown>[] {
  const objects: Record<string, unknown>[] = [];
  for (const [name, text] of rendered.files) {
    for (const doc of YAML.parseAllDocuments(text)) {
      if (doc.errors.length) throw new Error(`${name}: ${doc.errors[0].message}`);
      const value = doc.toJS() as Record<string, unknown> | null;
      if (value) objects.push(value);
    }
  }
  return objects;
}
