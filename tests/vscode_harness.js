// Runs editors/vscode/extension.js under node with the real vscode-languageclient and the real
// dgemma-ls, behind a stand-in `vscode` module that implements what the client touches and
// records the rest (registered providers, popups, output). For tests/test_vscode_extension.py.
//
//   node vscode_harness.js run    (the job as JSON on stdin, the report as JSON on stdout)
"use strict";

const fs = require("fs");
const Module = require("module");
const path = require("path");
const url = require("url");

// --- the stand-in `vscode` module -------------------------------------------------------------

const record = { calls: [], output: [], popups: [] };

class Disposable {
  constructor(onDispose = () => {}) {
    this.onDispose = onDispose;
  }
  static from(...items) {
    return new Disposable(() => items.forEach((item) => item && item.dispose && item.dispose()));
  }
  dispose() {
    this.onDispose();
  }
}

class EventEmitter {
  constructor() {
    this.listeners = new Set();
    this.event = (listener, thisArg) => {
      const bound = listener.bind(thisArg);
      this.listeners.add(bound);
      return new Disposable(() => this.listeners.delete(bound));
    };
  }
  fire(value) {
    for (const listener of [...this.listeners]) listener(value);
  }
  dispose() {
    this.listeners.clear();
  }
}

class Uri {
  constructor(scheme, fsPath, text) {
    this.scheme = scheme;
    this.fsPath = fsPath;
    this.path = fsPath;
    this.text = text;
  }
  static file(file) {
    return new Uri("file", file, url.pathToFileURL(file).href);
  }
  static parse(text) {
    const parsed = new URL(text);
    const scheme = parsed.protocol.replace(/:$/, "");
    return new Uri(scheme, scheme === "file" ? url.fileURLToPath(parsed) : parsed.pathname, text);
  }
  toString() {
    return this.text;
  }
  toJSON() {
    return this.text;
  }
}

class Position {
  constructor(line, character) {
    this.line = line;
    this.character = character;
  }
}

class Range {
  constructor(a, b, c, d) {
    [this.start, this.end] = typeof a === "number" ? [new Position(a, b), new Position(c, d)] : [a, b];
  }
}

class CancellationTokenSource {
  constructor() {
    const cancelled = new EventEmitter();
    this.token = { isCancellationRequested: false, onCancellationRequested: cancelled.event };
    this.cancelled = cancelled;
  }
  cancel() {
    this.token.isCancellationRequested = true;
    this.cancelled.fire();
  }
  dispose() {}
}

class TextDocument {
  constructor(file, languageId, text) {
    this.uri = Uri.file(file);
    this.fileName = file;
    this.languageId = languageId;
    this.version = 1;
    this.text = text;
    this.isClosed = false;
    this.isDirty = false;
    this.isUntitled = false;
    this.eol = 1;
  }
  get lineCount() {
    return this.text.split("\n").length;
  }
  getText() {
    return this.text;
  }
  offsetAt(position) {
    const lines = this.text.split("\n").slice(0, position.line);
    return lines.reduce((sum, line) => sum + line.length + 1, 0) + position.character;
  }
}

/** Settings as VS Code hands them out: `section.key` -> value; getConfiguration scopes by prefix. */
function configurationStore(values) {
  return {
    values,
    getConfiguration(section) {
      const prefix = section ? `${section}.` : "";
      return {
        get: (key, fallback) => {
          const value = values[prefix + key];
          return value === undefined ? fallback : value;
        },
        has: (key) => prefix + key in values,
        inspect: (key) => ({ key: prefix + key, defaultValue: values[prefix + key] }),
        update: async () => {},
      };
    },
  };
}

const job = JSON.parse(fs.readFileSync(0, "utf8"));
const settings = configurationStore({ ...job.settings });
const configurationChanged = new EventEmitter();
const documents = (job.documents || []).map((d) => new TextDocument(d.path, d.languageId, d.text));

/** Event slots the client subscribes to and the harness never fires. */
const quietEvent = () => new EventEmitter().event;

const register = (name) => (selector, provider) => {
  record.calls.push(name);
  record[name] = record[name] || [];
  record[name].push({ selector, provider });
  return new Disposable();
};

function matches(selector, document) {
  const filters = Array.isArray(selector) ? selector : [selector];
  return filters.some((filter) =>
    typeof filter === "string"
      ? filter === document.languageId
      : (!filter.language || filter.language === document.languageId) &&
        (!filter.scheme || filter.scheme === document.uri.scheme),
  )
    ? 10
    : 0;
}

function outputChannel(name, options) {
  const log = (level) => (text, ...args) => record.output.push(`[${level}] ${text} ${args.join(" ")}`.trimEnd());
  const levels = options && options.log
    ? { logLevel: 1, onDidChangeLogLevel: quietEvent(), trace: log("trace"), debug: log("debug"), info: log("info"),
        warn: log("warning"), error: log("error") }
    : {};
  return {
    name,
    ...levels,
    append: (text) => record.output.push(text),
    appendLine: (text) => record.output.push(text),
    replace: () => {},
    clear: () => {},
    show: () => record.calls.push(`show output ${name}`),
    hide: () => {},
    dispose: () => {},
  };
}

function popup(kind) {
  return (message, ...items) => {
    record.popups.push({ kind, message, items: items.map((item) => (typeof item === "string" ? item : item.title)) });
    return Promise.resolve(undefined);
  };
}

const enumProxy = new Proxy({}, { get: (_, name) => (typeof name === "string" ? name : undefined) });

const vscode = {
  version: "1.95.0",
  Disposable,
  EventEmitter,
  Uri,
  Position,
  Range,
  CancellationTokenSource,
  CancellationError: class CancellationError extends Error {},
  InlineCompletionItem: class InlineCompletionItem {
    constructor(insertText, range, command) {
      Object.assign(this, { insertText, range, command });
    }
  },
  InlineCompletionList: class InlineCompletionList {
    constructor(items) {
      this.items = items;
    }
  },
  SnippetString: class SnippetString {
    constructor(value) {
      this.value = value;
    }
  },
  TextEdit: class TextEdit {
    constructor(range, newText) {
      Object.assign(this, { range, newText });
    }
  },
  InlineCompletionTriggerKind: { Invoke: 0, Automatic: 1 }, // VS Code's values, not LSP's
  LogLevel: { Off: 0, Trace: 1, Debug: 2, Info: 3, Warning: 4, Error: 5 },
  ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
  // base classes the client extends; the harness never builds them
  CallHierarchyItem: class {},
  CodeAction: class {},
  CodeLens: class {},
  CompletionItem: class {},
  Diagnostic: class {},
  DocumentLink: class {},
  InlayHint: class {},
  SymbolInformation: class {},
  TypeHierarchyItem: class {},
  TabInputText: class {},
  TabInputNotebook: class {},
  TabInputTextDiff: class {},
  TabInputCustom: class {},
  CodeActionKind: enumProxy,
  DiagnosticSeverity: enumProxy,
  env: { appName: "vscode_harness", language: "en", openExternal: async () => true },
  commands: {
    registerCommand: (name) => {
      record.calls.push(`registerCommand ${name}`);
      return new Disposable();
    },
    executeCommand: async (name) => record.calls.push(`executeCommand ${name}`),
  },
  window: {
    createOutputChannel: outputChannel,
    showErrorMessage: popup("error"),
    showWarningMessage: popup("warning"),
    showInformationMessage: popup("information"),
    withProgress: (_, task) => task({ report: () => {} }, new CancellationTokenSource().token),
    activeTextEditor: undefined,
    visibleTextEditors: [],
    onDidChangeActiveTextEditor: quietEvent(),
    onDidChangeVisibleTextEditors: quietEvent(),
    tabGroups: { all: [], onDidChangeTabs: quietEvent() },
  },
  workspace: {
    getConfiguration: settings.getConfiguration,
    onDidChangeConfiguration: configurationChanged.event,
    textDocuments: documents,
    workspaceFolders: undefined,
    onDidOpenTextDocument: quietEvent(),
    onDidCloseTextDocument: quietEvent(),
    onDidChangeTextDocument: quietEvent(),
    onDidSaveTextDocument: quietEvent(),
    onWillSaveTextDocument: quietEvent(),
    onDidChangeWorkspaceFolders: quietEvent(),
    onDidCreateFiles: quietEvent(),
    onDidRenameFiles: quietEvent(),
    onDidDeleteFiles: quietEvent(),
    onWillCreateFiles: quietEvent(),
    onWillRenameFiles: quietEvent(),
    onWillDeleteFiles: quietEvent(),
    applyEdit: async () => true,
  },
  languages: new Proxy(
    {
      match: matches,
      createDiagnosticCollection: () => ({ set() {}, delete() {}, clear() {}, forEach() {}, dispose() {} }),
    },
    // every languages.registerXProvider(selector, provider) is recorded under its name
    { get: (target, name) => target[name] || (String(name).startsWith("register") ? register(name) : undefined) },
  ),
};

const load = Module._load;
Module._load = function (request, ...rest) {
  return request === "vscode" ? vscode : load.call(this, request, ...rest);
};

// --- the run ----------------------------------------------------------------------------------

async function waitFor(what, condition, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const outputHas = (text) => () => record.output.some((line) => line.includes(text));

async function run() {
  const extension = require(path.resolve(job.extension));
  const context = { subscriptions: [] };
  await extension.activate(context);
  if (job.expect_start_failure) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    return;
  }
  await waitFor("the model to load", () => outputHas("model ready")() || outputHas("Server process exited")(),
    job.timeout_ms);
  if (!outputHas("model ready")()) throw new Error("the server exited before its model was ready");

  const inline = record.registerInlineCompletionItemProvider || [];
  record.completions = [];
  for (const document of documents.filter((d) => inline.some((p) => matches(p.selector, d)))) {
    const { provider } = inline.find((p) => matches(p.selector, document));
    const lines = document.text.split("\n");
    const position = new Position(lines.length - 2, lines[lines.length - 2].length);
    // Invoke, as for Alt+\ (asks for every candidate)
    const result = await provider.provideInlineCompletionItems(
      document,
      position,
      { triggerKind: vscode.InlineCompletionTriggerKind.Invoke, selectedCompletionInfo: undefined },
      new CancellationTokenSource().token,
    );
    const items = Array.isArray(result) ? result : (result && result.items) || [];
    record.completions.push({
      file: document.fileName,
      items: items.map((item) => (typeof item.insertText === "string" ? item.insertText : item.insertText.value)),
    });
  }

  for (const [key, value] of Object.entries(job.change || {})) {
    settings.values[key] = value;
  }
  if (job.change) {
    const changed = Object.keys(job.change);
    configurationChanged.fire({
      affectsConfiguration: (section) => changed.some((key) => key === section || key.startsWith(`${section}.`)),
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  await extension.deactivate();
}

process.on("unhandledRejection", (error) => record.output.push(`unhandled rejection: ${error}`));

function report(failure) {
  if (failure) record.failure = failure;
  for (const name of Object.keys(record)) {
    if (name.startsWith("register")) record[name] = record[name].map((p) => p.selector);
  }
  process.stdout.write(JSON.stringify(record));
  process.exit(0);
}

setTimeout(() => report(`the harness ran past ${2 * job.timeout_ms} ms`), 2 * job.timeout_ms).unref();
run()
  .then(() => report())
  .catch((error) => report(error instanceof Error ? error.stack : String(error)));
