// @ts-check
// Starts dgemma-ls over stdio for the languages it serves and keeps its settings in step.
// Everything the server does (inline completions, code actions, repairs) arrives through
// the standard LSP features of vscode-languageclient; nothing here knows about the model.
"use strict";

const vscode = require("vscode");
const { DidChangeConfigurationNotification, LanguageClient, TransportKind } = require("vscode-languageclient/node");
const which = require("which");

const SECTION = "dgemma";
const LANGUAGES = ["python", "javascript", "javascriptreact", "typescript", "typescriptreact", "json", "jsonc", "markdown"];
// Keys the server reads. serverPath and serverArgs only concern this extension: sending
// them would earn an "unknown setting" warning from the server.
const SERVER_KEYS = ["model", "device", "dtype", "quantize", "compile", "steps", "entropyBound", "maxMiddleTokens", "enabledLanguages", "backend", "backendUrl", "backendModel", "backendApiKeyEnv", "backendTimeoutMs"];
const RESTART_KEYS = ["serverPath", "serverArgs"];

/** @type {LanguageClient | undefined} */
let client;
/** @type {vscode.LogOutputChannel} */
let output;

/** The `dgemma` section as the server expects it, without the extension-only keys. */
function serverSettings() {
  const config = vscode.workspace.getConfiguration(SECTION);
  /** @type {Record<string, unknown>} */
  const settings = {};
  for (const key of SERVER_KEYS) {
    const value = config.get(key);
    if (value !== undefined && value !== null && value !== "") {
      settings[key] = value;
    }
  }
  return settings;
}

function createClient() {
  const config = vscode.workspace.getConfiguration(SECTION);
  const command = config.get("serverPath") || "dgemma-ls";
  const args = config.get("serverArgs") || [];
  /** @type {import("vscode-languageclient/node").ServerOptions} */
  const serverOptions = { command, args, transport: TransportKind.stdio };
  /** @type {LanguageClient} */
  let languageClient;
  /** @type {import("vscode-languageclient/node").LanguageClientOptions} */
  const clientOptions = {
    documentSelector: LANGUAGES.flatMap((language) => [
      { scheme: "file", language },
      { scheme: "untitled", language },
    ]),
    initializationOptions: { [SECTION]: serverSettings() },
    // Pushes workspace/didChangeConfiguration when these change (and once after start-up).
    synchronize: { configurationSection: SERVER_KEYS.map((key) => `${SECTION}.${key}`) },
    middleware: {
      workspace: {
        // The client's own payload leaves out every falsy value, so `compile: false` would
        // never arrive (the server would fall back to its default, true): send the section
        // as serverSettings() builds it instead.
        didChangeConfiguration: async () => {
          await languageClient.sendNotification(DidChangeConfigurationNotification.type, {
            settings: { [SECTION]: serverSettings() },
          });
        },
        // The server may also pull the section: answer with the same filtered view.
        configuration: async (params, token, next) => {
          const result = await next(params, token);
          if (!Array.isArray(result)) {
            return result;
          }
          return result.map((value, i) => (params.items[i].section === SECTION ? serverSettings() : value));
        },
      },
    },
    outputChannel: output,
  };
  // vscode-languageclient 10 registers textDocument/inlineCompletion (ghost text) by itself.
  // 9.x did so only after registerProposedFeatures(), and sent VS Code's trigger kinds
  // unconverted (Invoke 0, Automatic 1) where LSP 3.18 has Invoked 1, Automatic 2.
  languageClient = new LanguageClient("dgemma", "dgemma-ls", serverOptions, clientOptions);
  return languageClient;
}

async function start() {
  // A server that cannot be found gets one actionable message here; starting the client
  // anyway would add vscode-languageclient's own "couldn't create connection" popup.
  const command = vscode.workspace.getConfiguration(SECTION).get("serverPath") || "dgemma-ls";
  if (!which.sync(command, { nothrow: true })) {
    const choice = await vscode.window.showErrorMessage(
      `dgemma-ls: no executable "${command}". ` +
        "Install the server (pip install dgemma-ls) or set dgemma.serverPath to its executable.",
      "Open Settings",
    );
    if (choice === "Open Settings") {
      vscode.commands.executeCommand("workbench.action.openSettings", "dgemma.serverPath");
    }
    return;
  }
  client = createClient();
  try {
    await client.start();
  } catch (error) {
    // vscode-languageclient has already shown the failure and logged it in the output channel
    output.error(`dgemma-ls did not start: ${error instanceof Error ? error.message : error}`);
  }
}

async function stop() {
  const running = client;
  client = undefined;
  if (running) {
    try {
      await running.stop();
    } catch (error) {
      output.error(`stopping dgemma-ls: ${error}`);
    }
  }
}

async function restart() {
  await stop();
  await start();
}

/** @param {vscode.ExtensionContext} context */
async function activate(context) {
  // vscode-languageclient 10 logs through a LogOutputChannel's info / warn / error
  output = vscode.window.createOutputChannel("dgemma-ls", { log: true });
  context.subscriptions.push(
    output,
    vscode.commands.registerCommand("dgemma.restartServer", restart),
    vscode.commands.registerCommand("dgemma.showOutput", () => output.show()),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (RESTART_KEYS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
        restart();
      }
    }),
  );
  if (!vscode.workspace.getConfiguration("editor").get("inlineSuggest.enabled", true)) {
    output.warn("editor.inlineSuggest.enabled is off: inline completions will not show.");
  }
  await start();
}

async function deactivate() {
  await stop();
}

module.exports = { activate, deactivate };
