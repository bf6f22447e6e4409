#!/usr/bin/env node
// Compiles Bronco's reference contracts with solc-js (pinned in package.json) and writes
// chain/contracts/artifacts.json: ABI + bytecode per contract, and the sha256 of what they
// were built from (our sources, the compiler and OpenZeppelin versions, the settings).
// Python never compiles: it loads the committed artifacts; tests/chain checks the hash.
//
//   node chain/contracts/build.js          rebuild artifacts.json
//   node chain/contracts/build.js --check  exit 1 when artifacts.json is stale
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const HERE = __dirname;
const ROOT = path.resolve(HERE, "..", "..");
const OUT = path.join(HERE, "artifacts.json");
const SOURCE_DIRS = ["src", "test"];
const SETTINGS = { evmVersion: "cancun", optimizer: { enabled: true, runs: 200 } };

function canonical(value) {
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  if (value && typeof value === "object") {
    return (
      "{" +
      Object.keys(value)
        .sort()
        .map((k) => JSON.stringify(k) + ":" + canonical(value[k]))
        .join(",") +
      "}"
    );
  }
  return JSON.stringify(value);
}

function sha256(text) {
  return crypto.createHash("sha256").update(text).digest("hex");
}

function readSources() {
  const sources = {};
  for (const dir of SOURCE_DIRS) {
    for (const name of fs.readdirSync(path.join(HERE, dir)).sort()) {
      if (name.endsWith(".sol")) {
        sources[`${dir}/${name}`] = fs.readFileSync(path.join(HERE, dir, name), "utf8");
      }
    }
  }
  return sources;
}

function sourceHash(sources) {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));
  const digests = {};
  for (const [name, text] of Object.entries(sources)) digests[name] = sha256(text);
  return sha256(
    canonical({
      sources: digests,
      solc: pkg.dependencies["solc"],
      openzeppelin: pkg.dependencies["@openzeppelin/contracts"],
      settings: SETTINGS,
    }),
  );
}

function findImport(importPath) {
  const candidates = [
    path.join(ROOT, "node_modules", importPath),
    path.join(HERE, importPath),
  ];
  for (const file of candidates) {
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `import not found: ${importPath}` };
}

function compile(sources) {
  const input = {
    language: "Solidity",
    sources: Object.fromEntries(Object.entries(sources).map(([k, v]) => [k, { content: v }])),
    settings: {
      ...SETTINGS,
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) {
    for (const e of errors) console.error(e.formattedMessage);
    process.exit(2);
  }
  const contracts = {};
  for (const file of Object.keys(sources)) {
    for (const [name, c] of Object.entries(output.contracts[file] || {})) {
      contracts[name] = {
        source: file,
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      };
    }
  }
  return contracts;
}

function main() {
  const sources = readSources();
  const hash = sourceHash(sources);
  const check = process.argv.includes("--check");
  const artifacts = {
    compiler: solc.version(),
    sources_sha256: hash,
    contracts: compile(sources),
  };
  const text = JSON.stringify(artifacts, null, 1) + "\n";
  if (check) {
    const current = fs.existsSync(OUT) ? fs.readFileSync(OUT, "utf8") : "";
    if (current !== text) {
      console.error("chain/contracts/artifacts.json is stale: run `make contracts`");
      process.exit(1);
    }
    console.log("artifacts up to date", hash);
    return;
  }
  fs.writeFileSync(OUT, text);
  console.log(`wrote ${path.relative(ROOT, OUT)} (${Object.keys(artifacts.contracts).join(", ")}) ${hash}`);
}

main();
