// The cluster file parser: the example of the original design reads back as written, defaults fill in,
// and every rule an operator can break gives a ConfigError that names the field to fix.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { stringify } from 'yaml';
import { constants } from '../../src/constants.js';
import {
  findNode,
  formatAddress,
  loadClusterConfig,
  parseClusterConfig,
  quorumMembers,
  type ClusterConfig,
} from '../../src/control/config.js';
import { ConfigError } from '../../src/lib/errors.js';

const baseDir = '/etc/blockmirror';

// The cluster file of the original design, comments and all.
const designExample = `cluster: demo
secret: change-me             # shared secret for peer authentication (or secretFile:)
heartbeat: { intervalMs: 250, timeoutMs: 2000, probationMs: 2000 }
nodes:
  - id: a
    nbd: 127.0.0.1:10809          # client-facing NBD listener
    replication: 127.0.0.1:7701   # TCP mirror links and UDP heartbeats (same port number)
    admin: 127.0.0.1:9701         # HTTP admin API, /metrics, dashboard
    dataDir: ./data/a
  - id: b
    nbd: 127.0.0.1:10810
    replication: 127.0.0.1:7702
    admin: 127.0.0.1:9702
    dataDir: ./data/b
volumes:
  - name: vol0
    size: 1GiB
    replicas: [a, b]
    primary: a                # or: multiPrimary: true
    mode: sync                # sync | async | logship | local
`;

type RawMap = Record<string, unknown>;
interface RawCluster extends RawMap {
  nodes: RawMap[];
  volumes: RawMap[];
}

/** The example as plain data, for tests that change one thing and write it back as YAML. */
function rawExample(): RawCluster {
  return {
    cluster: 'demo',
    secret: 'change-me',
    nodes: [
      { id: 'a', nbd: '127.0.0.1:10809', replication: '127.0.0.1:7701', admin: '127.0.0.1:9701', dataDir: './data/a' },
      { id: 'b', nbd: '127.0.0.1:10810', replication: '127.0.0.1:7702', admin: '127.0.0.1:9702', dataDir: './data/b' },
    ],
    volumes: [{ name: 'vol0', size: '1GiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
  };
}

function at<T>(list: T[], index: number): T {
  const item = list[index];
  assert.ok(item !== undefined, `no item ${index}`);
  return item;
}

function parseRaw(change: (raw: RawCluster) => void): ClusterConfig {
  const raw = rawExample();
  change(raw);
  return parseClusterConfig(stringify(raw), { baseDir });
}

/** Asserts that `run` throws a ConfigError for exactly `field` whose message contains `phrase`. */
function assertConfigError(run: () => unknown, field: string, phrase: string | RegExp): ConfigError {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`);
  assert.equal(caught.code, 'ERR_CONFIG_INVALID');
  assert.equal(caught.field, field);
  if (field !== '') assert.ok(caught.message.startsWith(`${field}: `), `message does not start with the field: ${caught.message}`);
  if (typeof phrase === 'string') {
    assert.ok(caught.message.includes(phrase), `message lacks ${JSON.stringify(phrase)}: ${caught.message}`);
  } else {
    assert.match(caught.message, phrase);
  }
  return caught;
}

function rejects(change: (raw: RawCluster) => void, field: string, phrase: string | RegExp): ConfigError {
  return assertConfigError(() => parseRaw(change), field, phrase);
}

function withTempDir(run: (dir: string) => void): void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-config-'));
  try {
    run(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('cluster file: valid input', () => {
  test('the design\'s example cluster file parses with the values it states', () => {
    const config = parseClusterConfig(designExample, { baseDir });
    assert.deepEqual(config, {
      cluster: 'demo',
      secret: 'change-me',
      coordination: { kind: 'static' },
      hooks: { promoted: null, demoted: null, splitBrain: null, timeoutMs: constants.hookTimeoutMsDefault },
      heartbeat: { intervalMs: 250, timeoutMs: 2000, probationMs: 2000 },
      resync: { regionBytes: constants.dirtyRegionBytes, rateBytesPerSecMax: 0 },
      connections: constants.peerConnectionsDefault,
      busyPollMicros: constants.busyPollMicrosDefault,
      log: {
        partitionBytes: constants.logPartitionBytesDefault,
        partitions: constants.logPartitionsDefault,
        cpIntervalMs: constants.cpIntervalMsDefault,
        retentionBytesMax: (constants.logPartitionsDefault - 2) * constants.logPartitionBytesDefault,
      },
      nodes: [
        {
          id: 'a',
          nbd: { host: '127.0.0.1', port: 10809 },
          replication: { host: '127.0.0.1', port: 7701 },
          admin: { host: '127.0.0.1', port: 9701 },
          dataDir: '/etc/blockmirror/data/a',
          witness: false,
          priority: 0,
        },
        {
          id: 'b',
          nbd: { host: '127.0.0.1', port: 10810 },
          replication: { host: '127.0.0.1', port: 7702 },
          admin: { host: '127.0.0.1', port: 9702 },
          dataDir: '/etc/blockmirror/data/b',
          witness: false,
          priority: 0,
        },
      ],
      volumes: [
        {
          name: 'vol0',
          sizeBytes: 1024 ** 3,
          replicas: ['a', 'b'],
          primary: 'a',
          multiPrimary: false,
          mode: 'sync',
          strict: false,
          secondaryAccess: 'refuse',
          readOnly: false,
          description: '',
          quorum: 'off',
          onNoQuorum: 'suspend',
          afterSplitBrain: 'disconnect',
        },
      ],
    });
  });

  test('omitted optional keys take their defaults', () => {
    const config = parseRaw((raw) => {
      delete (raw as RawMap).volumes;
      raw.nodes = [at(raw.nodes, 0)];
    });
    assert.deepEqual(config.heartbeat, {
      intervalMs: constants.heartbeatIntervalMsDefault,
      timeoutMs: constants.heartbeatTimeoutMsDefault,
      probationMs: constants.heartbeatProbationMsDefault,
    });
    assert.equal(config.connections, constants.peerConnectionsDefault);
    assert.equal(config.busyPollMicros, constants.busyPollMicrosDefault);
    assert.deepEqual(config.coordination, { kind: 'static' });
    assert.deepEqual(config.hooks, { promoted: null, demoted: null, splitBrain: null, timeoutMs: constants.hookTimeoutMsDefault });
    assert.equal(at(config.nodes, 0).priority, 0);
    assert.deepEqual(config.volumes, []);
  });

  test('coordination, hooks, priority and secondaryAccess written with no value take their defaults', () => {
    const config = parseRaw((raw) => {
      raw.coordination = null;
      raw.hooks = null;
      at(raw.nodes, 0).priority = null;
      at(raw.volumes, 0).secondaryAccess = null;
    });
    assert.deepEqual(config.coordination, { kind: 'static' });
    assert.deepEqual(config.hooks, { promoted: null, demoted: null, splitBrain: null, timeoutMs: constants.hookTimeoutMsDefault });
    assert.equal(at(config.nodes, 0).priority, 0);
    assert.equal(at(config.volumes, 0).secondaryAccess, 'refuse');
  });

  test('every volume option, multiPrimary, integer sizes and a single-copy local volume', () => {
    const config = parseRaw((raw) => {
      raw.connections = 4;
      raw.busyPollMicros = 0;
      raw.volumes = [
        {
          name: 'db.primary-1', size: 512 * 1024 * 1024, replicas: ['b', 'a'], multiPrimary: true, mode: 'async',
          strict: true, secondaryAccess: 'read-only', readOnly: true, description: 'database',
          quorum: 'off', onNoQuorum: 'io-error', afterSplitBrain: 'discard-younger-primary',
        },
        { name: 'scratch', size: '4KiB', replicas: ['b'], primary: 'b', mode: 'local' },
      ];
    });
    assert.equal(config.connections, 4);
    assert.equal(config.busyPollMicros, 0);
    const [db, scratch] = config.volumes;
    assert.deepEqual(db, {
      name: 'db.primary-1', sizeBytes: 512 * 1024 * 1024, replicas: ['b', 'a'], primary: null, multiPrimary: true,
      mode: 'async', strict: true, secondaryAccess: 'read-only', readOnly: true, description: 'database',
      quorum: 'off', onNoQuorum: 'io-error', afterSplitBrain: 'discard-younger-primary',
    });
    assert.equal(scratch?.sizeBytes, 4096);
    assert.equal(scratch?.mode, 'local');
  });

  test('addresses: IPv6 in brackets, host names, wildcards and port 0', () => {
    const config = parseRaw((raw) => {
      raw.nodes = [
        { id: 'a', nbd: '[::1]:10809', replication: 'LocalHost:7701', admin: '0.0.0.0:0', dataDir: '/srv/a' },
        { id: 'b', nbd: '[0:0:0:0:0:0:0:1]:10810', replication: 'node-b.example.com:7701', admin: '0.0.0.0:0', dataDir: '/srv/b' },
      ];
    });
    const [a, b] = config.nodes;
    assert.deepEqual(a?.nbd, { host: '::1', port: 10809 });
    assert.deepEqual(a?.replication, { host: 'localhost', port: 7701 });
    assert.deepEqual(a?.admin, { host: '0.0.0.0', port: 0 });
    assert.deepEqual(b?.nbd, { host: '::1', port: 10810 });
    assert.equal(b?.dataDir, '/srv/b');
    assert.equal(formatAddress({ host: '::1', port: 10809 }), '[::1]:10809');
    assert.equal(formatAddress({ host: '127.0.0.1', port: 10809 }), '127.0.0.1:10809');
    assert.equal(formatAddress({ host: 'localhost', port: 0 }), 'localhost:0');
  });

  test('findNode returns the node or names the known ids', () => {
    const config = parseClusterConfig(designExample, { baseDir });
    assert.equal(findNode(config, 'b').replication.port, 7702);
    assertConfigError(() => findNode(config, 'c'), '--node', /"c".*\(nodes: a, b\)/);
  });

  test('loadClusterConfig resolves dataDir against the file directory and reads secretFile', () => {
    withTempDir((dir) => {
      fs.writeFileSync(path.join(dir, 'secret.txt'), 'from-a-file-1234\n');
      const text = designExample.replace('secret: change-me', 'secretFile: secret.txt');
      fs.writeFileSync(path.join(dir, 'cluster.yaml'), text);
      const config = loadClusterConfig(path.join(dir, 'cluster.yaml'));
      assert.equal(config.secret, 'from-a-file-1234');
      assert.equal(at(config.nodes, 0).dataDir, path.join(dir, 'data', 'a'));
    });
  });

  test('loadClusterConfig on a missing file says it cannot read it', () => {
    withTempDir((dir) => {
      const missing = path.join(dir, 'nope.yaml');
      const error = assertConfigError(() => loadClusterConfig(missing), '', `cannot read ${missing}: `);
      assert.match(error.message, /ENOENT/);
    });
  });
});

describe('cluster file: syntax and shape', () => {
  test('YAML syntax errors give the line', () => {
    const text = designExample.replace('replicas: [a, b]', 'replicas: [a, b');
    const line = text.split('\n').findIndex((l) => l.includes('primary: a')) + 1;
    assertConfigError(() => parseClusterConfig(text, { baseDir }), '', new RegExp(`^YAML: .+ at line ${line}$`));
    assertConfigError(() => parseClusterConfig('cluster: a\ncluster: b\n', { baseDir }), '', /^YAML: .*unique.* at line 2$/);
    assertConfigError(() => parseClusterConfig('cluster: *nowhere\n', { baseDir }), '', /^YAML: .*alias.* at line 1$/);
  });

  test('an empty file or a top level that is not a map', () => {
    assertConfigError(() => parseClusterConfig('', { baseDir }), '', 'empty');
    assertConfigError(() => parseClusterConfig('- a\n- b\n', { baseDir }), '', 'expected a map, got list');
  });

  test('unknown keys name their path and the keys that are allowed', () => {
    rejects((raw) => { raw.secrets = 'x'; }, 'secrets', 'unknown key (expected one of: cluster, secret, secretFile,');
    rejects((raw) => { raw.heartbeat = { intervalMS: 100 }; }, 'heartbeat.intervalMS', 'unknown key (expected one of: intervalMs, timeoutMs, probationMs)');
    rejects((raw) => { at(raw.nodes, 1).datadir = '/x'; }, 'nodes[1].datadir', 'unknown key (expected one of: id, nbd, replication, admin, dataDir, witness, priority)');
    const error = rejects((raw) => { at(raw.volumes, 0).sizee = '1GiB'; }, 'volumes[0].sizee', 'unknown key (expected one of: name, size, ');
    assert.ok(error.message.includes('strict, secondaryAccess, allowSecondaryReads, readOnly, description, quorum, onNoQuorum, afterSplitBrain)'), error.message);
  });

  test('wrong types name the field and the type found', () => {
    const error = rejects((raw) => { at(raw.nodes, 0).nbd = 10809; }, 'nodes[0].nbd', 'expected a "host:port" string, got number');
    assert.equal(error.message, 'nodes[0].nbd: expected a "host:port" string, got number');
    rejects((raw) => { raw.nodes = { a: 1 } as unknown as RawMap[]; }, 'nodes', 'expected a list of nodes, got map');
    rejects((raw) => { raw.volumes = 'vol0' as unknown as RawMap[]; }, 'volumes', 'expected a list of volumes, got string');
    rejects((raw) => { raw.nodes = ['a'] as unknown as RawMap[]; }, 'nodes[0]', 'got string');
    rejects((raw) => { at(raw.nodes, 0).id = 7; }, 'nodes[0].id', 'got number (put it in quotes)');
    rejects((raw) => { at(raw.volumes, 0).strict = 'yes'; }, 'volumes[0].strict', 'expected true or false, got string');
    rejects((raw) => { at(raw.volumes, 0).description = ['x']; }, 'volumes[0].description', 'got list');
  });
});

describe('cluster file: top-level rules', () => {
  test('cluster is required and must be a valid name', () => {
    rejects((raw) => { delete raw.cluster; }, 'cluster', 'required but missing');
    rejects((raw) => { raw.cluster = ''; }, 'cluster', 'is not a valid cluster name');
    rejects((raw) => { raw.cluster = 'has space'; }, 'cluster', 'is not a valid cluster name');
    rejects((raw) => { raw.cluster = 'x'.repeat(65); }, 'cluster', 'is not a valid cluster name');
  });

  test('exactly one of secret and secretFile', () => {
    rejects((raw) => { delete raw.secret; }, 'secret', 'required but missing');
    rejects((raw) => { raw.secretFile = 'secret.txt'; }, 'secret', 'either secret or secretFile, not both');
  });

  test('a secret shorter than 8 characters is rejected without echoing it', () => {
    const error = rejects((raw) => { raw.secret = 'hunter2'; }, 'secret', 'at least 8 characters, got 7');
    assert.ok(!error.message.includes('hunter2'));
  });

  test('secretFile: missing file, short secret, trailing newline trimmed', () => {
    withTempDir((dir) => {
      const withFile = (name: string): ClusterConfig => {
        const raw = rawExample();
        delete raw.secret;
        raw.secretFile = name;
        return parseClusterConfig(stringify(raw), { baseDir: dir });
      };
      assertConfigError(() => withFile('absent.txt'), 'secretFile', `cannot read ${path.join(dir, 'absent.txt')}: no such file`);
      fs.writeFileSync(path.join(dir, 'short.txt'), 'abc\n');
      assertConfigError(() => withFile('short.txt'), 'secretFile', 'at least 8 characters, got 3');
      fs.writeFileSync(path.join(dir, 'good.txt'), 'correct horse battery\r\n');
      assert.equal(withFile('good.txt').secret, 'correct horse battery');
      fs.mkdirSync(path.join(dir, 'keys'));
      fs.writeFileSync(path.join(dir, 'keys', 'peer'), 'in-a-subdirectory');
      assert.equal(withFile('keys/peer').secret, 'in-a-subdirectory');
    });
  });

  test('heartbeat values are positive integers and the timeout exceeds the interval', () => {
    rejects((raw) => { raw.heartbeat = { intervalMs: 0 }; }, 'heartbeat.intervalMs', 'must be an integer from 1 to');
    rejects((raw) => { raw.heartbeat = { probationMs: 1.5 }; }, 'heartbeat.probationMs', 'expected an integer');
    rejects((raw) => { raw.heartbeat = { intervalMs: 500, timeoutMs: 500 }; }, 'heartbeat.timeoutMs', 'must be greater than heartbeat.intervalMs (500), got 500');
    rejects((raw) => { raw.heartbeat = { intervalMs: 3000 }; }, 'heartbeat.timeoutMs', 'got 2000 (the default)');
    assert.deepEqual(parseRaw((raw) => { raw.heartbeat = { timeoutMs: 5000 }; }).heartbeat, {
      intervalMs: constants.heartbeatIntervalMsDefault, timeoutMs: 5000, probationMs: constants.heartbeatProbationMsDefault,
    });
  });

  test('resync: regionSize is a power of two within bounds, rateMax at least 1 MiB per second', () => {
    const config = parseRaw((raw) => {
      (raw as RawMap).resync = { regionSize: '128KiB', rateMax: '50MiB' };
    });
    assert.deepEqual(config.resync, { regionBytes: 128 * 1024, rateBytesPerSecMax: 50 * 1024 * 1024 });
    rejects((raw) => { (raw as RawMap).resync = { regionSize: '96KiB' }; }, 'resync.regionSize', 'must be a power of two from 4KiB to 256KiB, got 96KiB');
    rejects((raw) => { (raw as RawMap).resync = { regionSize: '1MiB' }; }, 'resync.regionSize', 'must be a power of two');
    rejects((raw) => { (raw as RawMap).resync = { rateMax: '100KiB' }; }, 'resync.rateMax', 'must be at least 1MiB per second');
    rejects((raw) => { (raw as RawMap).resync = { rate: '10MiB' }; }, 'resync.rate', 'unknown key (expected one of: regionSize, rateMax)');
  });

  test('busyPollMicros is an integer from 0 to the maximum', () => {
    rejects((raw) => { raw.busyPollMicros = -1; }, 'busyPollMicros', `from 0 to ${constants.busyPollMicrosMax}, got -1`);
    rejects((raw) => { raw.busyPollMicros = constants.busyPollMicrosMax + 1; }, 'busyPollMicros', `got ${constants.busyPollMicrosMax + 1}`);
    rejects((raw) => { raw.busyPollMicros = 2.5; }, 'busyPollMicros', 'expected an integer');
    rejects((raw) => { raw.busyPollMicros = '50us'; }, 'busyPollMicros', 'expected an integer');
  });

  test('connections is an integer from 1 to the maximum', () => {
    rejects((raw) => { raw.connections = 0; }, 'connections', `from 1 to ${constants.peerConnectionsMax}, got 0`);
    rejects((raw) => { raw.connections = constants.peerConnectionsMax + 1; }, 'connections', `got ${constants.peerConnectionsMax + 1}`);
    rejects((raw) => { raw.connections = 'two'; }, 'connections', 'expected an integer');
  });

  test('log: partition size, count, CP interval and retention, with defaults', () => {
    assert.deepEqual(parseRaw((raw) => { raw.log = { partitionSize: '8MiB' }; }).log, {
      partitionBytes: 8 * 1024 * 1024, partitions: constants.logPartitionsDefault, cpIntervalMs: constants.cpIntervalMsDefault,
      retentionBytesMax: (constants.logPartitionsDefault - 2) * 8 * 1024 * 1024,
    });
    assert.deepEqual(parseRaw((raw) => { raw.log = { partitions: 2, cpIntervalMs: 250 }; }).log, {
      partitionBytes: constants.logPartitionBytesDefault, partitions: 2, cpIntervalMs: 250, retentionBytesMax: 0,
    });
    assert.equal(parseRaw((raw) => { raw.log = { partitions: 8, partitionSize: '4MiB', retentionMax: '8MiB' }; }).log.retentionBytesMax, 8 * 1024 * 1024);
    assert.equal(parseRaw((raw) => { raw.log = { retentionMax: 0 }; }).log.retentionBytesMax, 0);
    assert.equal(parseRaw(() => undefined).log.retentionBytesMax, (constants.logPartitionsDefault - 2) * constants.logPartitionBytesDefault);
    rejects((raw) => { raw.log = { partitions: 4, partitionSize: '4MiB', retentionMax: '12MiB' }; }, 'log.retentionMax', 'at most (partitions - 2) × partitionSize = 8MiB, got 12MiB');
    rejects((raw) => { raw.log = { retentionMax: 'lots' }; }, 'log.retentionMax', 'not a size');
    rejects((raw) => { raw.log = { partitionSize: '512KiB' }; }, 'log.partitionSize', 'must be at least 1MiB');
    rejects((raw) => { raw.log = { partitionSize: '1.5MB' }; }, 'log.partitionSize', 'not a multiple of 4KiB');
    rejects((raw) => { raw.log = { partitions: 1 }; }, 'log.partitions', `from 2 to ${constants.logPartitionsMax}, got 1`);
    rejects((raw) => { raw.log = { cpIntervalMs: 'soon' }; }, 'log.cpIntervalMs', 'expected an integer');
    rejects((raw) => { raw.log = { partitionSzie: '8MiB' }; }, 'log.partitionSzie', 'unknown key');
  });
});

describe('cluster file: node rules', () => {
  test('nodes must be a non-empty list', () => {
    rejects((raw) => { raw.nodes = []; }, 'nodes', 'at least one node');
    rejects((raw) => { delete (raw as RawMap).nodes; }, 'nodes', 'required but missing');
  });

  test('every node key is required', () => {
    for (const key of ['id', 'nbd', 'replication', 'admin', 'dataDir']) {
      rejects((raw) => { delete at(raw.nodes, 1)[key]; }, `nodes[1].${key}`, 'required but missing');
    }
    rejects((raw) => { at(raw.nodes, 1).dataDir = null; }, 'nodes[1].dataDir', 'required but empty');
    rejects((raw) => { at(raw.nodes, 1).dataDir = ''; }, 'nodes[1].dataDir', 'must not be empty');
  });

  test('node ids follow the id pattern', () => {
    for (const id of ['A', '-a', 'a.b', 'x'.repeat(33)]) {
      rejects((raw) => { at(raw.nodes, 0).id = id; }, 'nodes[0].id', 'is not a valid node id');
    }
  });

  test('addresses are host:port with a valid host and a port from 0 to 65535', () => {
    const bad: Array<[string, string]> = [
      ['127.0.0.1', 'the port is missing'],
      ['127.0.0.1:65536', 'from 0 to 65535, got "65536"'],
      ['127.0.0.1:http', 'from 0 to 65535'],
      [':10809', 'the host is missing'],
      ['::1:10809', 'IPv6 addresses need brackets'],
      ['[::g]:10809', 'is not an IPv6 address'],
      ['256.1.1.1:10809', 'is not an IPv4 address'],
      ['under_score:10809', 'is not an IPv4 address, [IPv6] address or host name'],
    ];
    for (const [address, phrase] of bad) {
      rejects((raw) => { at(raw.nodes, 0).admin = address; }, 'nodes[0].admin', phrase);
    }
  });

  test('duplicate node id', () => {
    const error = rejects((raw) => { at(raw.nodes, 1).id = 'a'; }, 'nodes[1].id', 'duplicate node id');
    assert.equal(error.message, 'nodes[1].id: duplicate node id "a" (also nodes[0].id)');
  });

  test('port clash among all nodes\' listeners', () => {
    rejects((raw) => { at(raw.nodes, 1).admin = '127.0.0.1:10809'; }, 'nodes[1].admin', '127.0.0.1:10809 is already used by nodes[0].nbd');
    rejects((raw) => { at(raw.nodes, 0).admin = '127.0.0.1:7701'; }, 'nodes[0].admin', 'already used by nodes[0].replication');
    rejects((raw) => { at(raw.nodes, 1).replication = '0.0.0.0:9701'; }, 'nodes[1].replication', '0.0.0.0:9701 clashes with nodes[0].admin (127.0.0.1:9701)');
    rejects((raw) => { at(raw.nodes, 0).nbd = '[::]:7702'; }, 'nodes[1].replication', '127.0.0.1:7702 clashes with nodes[0].nbd ([::]:7702)');
    rejects((raw) => { at(raw.nodes, 1).nbd = 'localhost:10809'; }, 'nodes[1].nbd', 'localhost:10809 clashes with nodes[0].nbd (127.0.0.1:10809)');
    rejects((raw) => {
      at(raw.nodes, 0).nbd = '[::1]:5000';
      at(raw.nodes, 1).nbd = '[0::1]:5000';
    }, 'nodes[1].nbd', '[::1]:5000 is already used by nodes[0].nbd');
  });

  test('listeners that do not clash: port 0, different hosts', () => {
    const config = parseRaw((raw) => {
      for (const node of raw.nodes) {
        node.nbd = '127.0.0.1:0';
        node.admin = '0.0.0.0:0';
      }
      at(raw.nodes, 0).replication = '10.0.0.1:7701';
      at(raw.nodes, 1).replication = '10.0.0.2:7701';
    });
    assert.equal(config.nodes.length, 2);
  });

  test('nodes on different machines (by their replication addresses) may each listen on 0.0.0.0 of the same port', () => {
    const config = parseRaw((raw) => {
      at(raw.nodes, 0).replication = '10.0.0.1:7701';
      at(raw.nodes, 1).replication = '10.0.0.2:7701';
      for (const node of raw.nodes) node.nbd = '0.0.0.0:10809';
    });
    assert.deepEqual(config.nodes.map((node) => node.nbd), [{ host: '0.0.0.0', port: 10809 }, { host: '0.0.0.0', port: 10809 }]);
    // On one machine (replication on loopback, or the same host), the same wildcard listener clashes.
    for (const hosts of [['127.0.0.1', '127.0.0.1'], ['10.0.0.1', '127.0.0.1'], ['0.0.0.0', '10.0.0.2']]) {
      rejects((raw) => {
        at(raw.nodes, 0).replication = `${hosts[0]}:7701`;
        at(raw.nodes, 1).replication = `${hosts[1]}:7702`;
        for (const node of raw.nodes) node.nbd = '0.0.0.0:10809';
      }, 'nodes[1].nbd', '0.0.0.0:10809 is already used by nodes[0].nbd');
    }
    // One node's own listeners always clash.
    rejects((raw) => {
      at(raw.nodes, 0).replication = '10.0.0.1:7701';
      at(raw.nodes, 1).replication = '10.0.0.2:7701';
      at(raw.nodes, 1).nbd = '0.0.0.0:7701';
    }, 'nodes[1].replication', 'clashes with nodes[1].nbd');
  });

  test('priority is an integer from 0 to the maximum, 0 by default', () => {
    const config = parseRaw((raw) => {
      at(raw.nodes, 0).priority = constants.nodePriorityMax;
    });
    assert.deepEqual(config.nodes.map((node) => node.priority), [constants.nodePriorityMax, 0]);
    const range = `from 0 to ${constants.nodePriorityMax}`;
    rejects((raw) => { at(raw.nodes, 1).priority = -1; }, 'nodes[1].priority', `must be an integer ${range}, got -1`);
    rejects((raw) => { at(raw.nodes, 0).priority = constants.nodePriorityMax + 1; }, 'nodes[0].priority', `${range}, got ${constants.nodePriorityMax + 1}`);
    rejects((raw) => { at(raw.nodes, 0).priority = 1.5; }, 'nodes[0].priority', `expected an integer ${range}, got 1.5`);
    rejects((raw) => { at(raw.nodes, 0).priority = 'high'; }, 'nodes[0].priority', 'got string');
  });

  test('two nodes sharing a dataDir', () => {
    rejects((raw) => { at(raw.nodes, 1).dataDir = 'data/a/'; }, 'nodes[1].dataDir', '/etc/blockmirror/data/a is also the dataDir of nodes[0] ("a")');
    rejects((raw) => { at(raw.nodes, 1).dataDir = '/etc/blockmirror/data/../data/a'; }, 'nodes[1].dataDir', 'is also the dataDir');
  });
});

describe('cluster file: volume rules', () => {
  test('volume names follow the name pattern', () => {
    rejects((raw) => { delete at(raw.volumes, 0).name; }, 'volumes[0].name', 'required but missing');
    for (const name of ['.hidden', 'a/b', 'x'.repeat(65)]) {
      rejects((raw) => { at(raw.volumes, 0).name = name; }, 'volumes[0].name', 'is not a valid volume name');
    }
  });

  test('size must be a positive multiple of 4 KiB, with an example of a valid size', () => {
    rejects((raw) => { at(raw.volumes, 0).size = '1000'; }, 'volumes[0].size', /not a multiple of 4KiB \(4096 bytes\).*1GiB/);
    rejects((raw) => { at(raw.volumes, 0).size = '1.5KiB'; }, 'volumes[0].size', 'not a multiple of 4KiB');
    rejects((raw) => { at(raw.volumes, 0).size = 0; }, 'volumes[0].size', /greater than 0.*1GiB/);
    rejects((raw) => { at(raw.volumes, 0).size = 'one gig'; }, 'volumes[0].size', /"one gig" is not a size.*1GiB/);
    rejects((raw) => { at(raw.volumes, 0).size = -4096; }, 'volumes[0].size', 'is not a size');
    rejects((raw) => { at(raw.volumes, 0).size = true; }, 'volumes[0].size', 'got boolean');
    rejects((raw) => { delete at(raw.volumes, 0).size; }, 'volumes[0].size', 'required but missing');
  });

  test('replicas is a non-empty list of distinct node ids', () => {
    rejects((raw) => { at(raw.volumes, 0).replicas = []; }, 'volumes[0].replicas', 'at least one node');
    rejects((raw) => { at(raw.volumes, 0).replicas = 'a'; }, 'volumes[0].replicas', 'expected a list of node ids, got string');
    rejects((raw) => { at(raw.volumes, 0).replicas = ['a', 'a']; }, 'volumes[0].replicas[1]', '"a" is listed twice (also volumes[0].replicas[0])');
  });

  test('replica that is not a node', () => {
    const error = rejects((raw) => { at(raw.volumes, 0).replicas = ['a', 'c']; }, 'volumes[0].replicas[1]', 'is not a node');
    assert.equal(error.message, 'volumes[0].replicas[1]: "c" is not a node (nodes: a, b)');
  });

  test('exactly one of primary and multiPrimary, and primary is a replica', () => {
    rejects((raw) => { delete at(raw.volumes, 0).primary; }, 'volumes[0].primary', 'multiPrimary: true');
    rejects((raw) => {
      delete at(raw.volumes, 0).primary;
      at(raw.volumes, 0).multiPrimary = false;
    }, 'volumes[0].primary', 'required but missing');
    rejects((raw) => { at(raw.volumes, 0).multiPrimary = true; }, 'volumes[0].multiPrimary', 'cannot be combined with primary');
    rejects((raw) => { at(raw.volumes, 0).replicas = ['b']; }, 'volumes[0].primary', '"a" is not one of the replicas (b)');
    assert.equal(parseRaw((raw) => { at(raw.volumes, 0).multiPrimary = false; }).volumes[0]?.primary, 'a');
  });

  test('mode is one of sync, async, logship, local', () => {
    rejects((raw) => { at(raw.volumes, 0).mode = 'fast'; }, 'volumes[0].mode', 'expected one of sync, async, logship, local, got "fast"');
  });

  test('mode local with more than one replica', () => {
    rejects((raw) => { at(raw.volumes, 0).mode = 'local'; }, 'volumes[0].mode', 'replicas lists 2 nodes (a, b)');
  });

  test('multiPrimary with mode logship', () => {
    rejects((raw) => {
      const volume = at(raw.volumes, 0);
      delete volume.primary;
      volume.multiPrimary = true;
      volume.mode = 'logship';
    }, 'volumes[0].multiPrimary', 'not supported with mode logship');
  });

  test('secondaryAccess is refuse by default, or read-only', () => {
    assert.equal(parseClusterConfig(designExample, { baseDir }).volumes[0]?.secondaryAccess, 'refuse');
    for (const access of ['refuse', 'read-only']) {
      assert.equal(parseRaw((raw) => { at(raw.volumes, 0).secondaryAccess = access; }).volumes[0]?.secondaryAccess, access);
    }
  });

  test('secondaryAccess refuses other words, naming the field', () => {
    const error = rejects((raw) => { at(raw.volumes, 0).secondaryAccess = 'forward'; }, 'volumes[0].secondaryAccess', 'got "forward"');
    assert.equal(error.message, 'volumes[0].secondaryAccess: expected one of refuse, read-only, got "forward"');
    rejects((raw) => { at(raw.volumes, 0).secondaryAccess = 'readonly'; }, 'volumes[0].secondaryAccess', 'got "readonly"');
    rejects((raw) => { at(raw.volumes, 0).secondaryAccess = 'Read-Only'; }, 'volumes[0].secondaryAccess', 'got "Read-Only"');
    rejects((raw) => { at(raw.volumes, 0).secondaryAccess = true; }, 'volumes[0].secondaryAccess', 'expected one of refuse, read-only, got boolean');
  });

  test('allowSecondaryReads, the older form: true is read-only, false is refuse', () => {
    assert.equal(parseRaw((raw) => { at(raw.volumes, 0).allowSecondaryReads = true; }).volumes[0]?.secondaryAccess, 'read-only');
    assert.equal(parseRaw((raw) => { at(raw.volumes, 0).allowSecondaryReads = false; }).volumes[0]?.secondaryAccess, 'refuse');
    assert.ok(!('allowSecondaryReads' in at(parseRaw((raw) => { at(raw.volumes, 0).allowSecondaryReads = true; }).volumes, 0)));
    rejects((raw) => { at(raw.volumes, 0).allowSecondaryReads = 'yes'; }, 'volumes[0].allowSecondaryReads', 'expected true or false, got string');
  });

  test('secondaryAccess and allowSecondaryReads together', () => {
    const error = rejects((raw) => {
      at(raw.volumes, 0).secondaryAccess = 'read-only';
      at(raw.volumes, 0).allowSecondaryReads = true;
    }, 'volumes[0].allowSecondaryReads', 'not both');
    assert.equal(error.message, 'volumes[0].allowSecondaryReads: set either secondaryAccess or allowSecondaryReads (its older form), not both');
    // Even when they agree, and even when one says the default.
    rejects((raw) => {
      at(raw.volumes, 0).secondaryAccess = 'refuse';
      at(raw.volumes, 0).allowSecondaryReads = false;
    }, 'volumes[0].allowSecondaryReads', 'not both');
  });

  test('duplicate volume name', () => {
    const error = rejects((raw) => {
      raw.volumes.push({ name: 'vol1', size: '1GiB', replicas: ['a'], primary: 'a' });
      raw.volumes.push({ name: 'vol0', size: '1GiB', replicas: ['b'], primary: 'b' });
    }, 'volumes[2].name', 'duplicate volume name');
    assert.equal(error.message, 'volumes[2].name: duplicate volume name "vol0" (also volumes[0].name)');
  });
});

describe('cluster file: coordination', () => {
  const etcd = (fields: RawMap): RawMap => ({ etcd: { endpoints: ['http://10.0.0.1:2379'], ...fields } });

  test('static is the default and may be written out', () => {
    assert.deepEqual(parseClusterConfig(designExample, { baseDir }).coordination, { kind: 'static' });
    assert.deepEqual(parseRaw((raw) => { raw.coordination = 'static'; }).coordination, { kind: 'static' });
  });

  test('a full etcd block reads back with its endpoints as http://host:port', () => {
    const text = designExample.replace('heartbeat:', `coordination:
  etcd:
    endpoints: [http://10.0.0.1:2379, "http://ETCD-2.Example.com:2379/", "http://[fd00:0::3]:2379"]
    prefix: prod/blockmirror
    leaseTtlMs: 10000
heartbeat:`);
    assert.deepEqual(parseClusterConfig(text, { baseDir }).coordination, {
      kind: 'etcd',
      endpoints: ['http://10.0.0.1:2379', 'http://etcd-2.example.com:2379', 'http://[fd00::3]:2379'],
      prefix: 'prod/blockmirror',
      leaseTtlMs: 10_000,
    });
  });

  test('etcd with endpoints alone takes the default prefix and lease', () => {
    assert.deepEqual(parseRaw((raw) => { raw.coordination = etcd({}); }).coordination, {
      kind: 'etcd', endpoints: ['http://10.0.0.1:2379'], prefix: constants.coordinationPrefixDefault, leaseTtlMs: constants.leaseTtlMsDefault,
    });
    for (const leaseTtlMs of [constants.leaseTtlMsMin, constants.leaseTtlMsMax]) {
      const coordination = parseRaw((raw) => { raw.coordination = etcd({ leaseTtlMs }); }).coordination;
      assert.equal(coordination.kind === 'etcd' ? coordination.leaseTtlMs : undefined, leaseTtlMs);
    }
  });

  test('leaseTtlMs is whole seconds from the minimum to the maximum', () => {
    const error = rejects((raw) => { raw.coordination = etcd({ leaseTtlMs: 2500 }); }, 'coordination.etcd.leaseTtlMs', 'must be whole seconds');
    assert.equal(error.message, 'coordination.etcd.leaseTtlMs: must be whole seconds (etcd counts a lease in seconds), got 2500');
    const range = `from ${constants.leaseTtlMsMin} to ${constants.leaseTtlMsMax}`;
    rejects((raw) => { raw.coordination = etcd({ leaseTtlMs: 1000 }); }, 'coordination.etcd.leaseTtlMs', `must be an integer ${range}, got 1000`);
    rejects((raw) => { raw.coordination = etcd({ leaseTtlMs: constants.leaseTtlMsMax + 1000 }); }, 'coordination.etcd.leaseTtlMs', `${range}, got ${constants.leaseTtlMsMax + 1000}`);
    rejects((raw) => { raw.coordination = etcd({ leaseTtlMs: '5s' }); }, 'coordination.etcd.leaseTtlMs', 'expected an integer');
  });

  test('endpoints is a non-empty list of http://host:port URLs', () => {
    rejects((raw) => { raw.coordination = { etcd: {} }; }, 'coordination.etcd.endpoints', 'required but missing');
    rejects((raw) => { raw.coordination = etcd({ endpoints: [] }); }, 'coordination.etcd.endpoints', 'expected a list of etcd client URLs (http://host:port), got an empty list');
    rejects((raw) => { raw.coordination = etcd({ endpoints: 'http://10.0.0.1:2379' }); }, 'coordination.etcd.endpoints', 'got string');
    const bad: Array<[unknown, string]> = [
      ['not a url', '"not a url" is not an etcd client URL (http://host:port, nothing after the port)'],
      ['10.0.0.1:2379', '"10.0.0.1:2379" is not an etcd client URL'],
      ['etcd-1:2379', '"etcd-1:2379" is not an etcd client URL (http://host:port, nothing after the port)'],
      ['http://user:pw@10.0.0.1:2379', 'is not an etcd client URL'],
      ['http://10.0.0.1:2379/?x=1', 'is not an etcd client URL'],
      ['http://10.0.0.1:65536', 'is not an etcd client URL'],
      ['https://10.0.0.1:2379', '"https://10.0.0.1:2379" is not an etcd client URL'],
      ['http://10.0.0.1', '"http://10.0.0.1" is not an etcd client URL'],
      ['http://10.0.0.1:2379/v3', '"http://10.0.0.1:2379/v3" is not an etcd client URL'],
      [2379, 'expected a URL, got number'],
    ];
    for (const [endpoint, phrase] of bad) {
      rejects((raw) => { raw.coordination = etcd({ endpoints: ['http://10.0.0.1:2379', endpoint] }); }, 'coordination.etcd.endpoints[1]', phrase);
    }
  });

  test('prefix is 1 to 128 key characters, not ending in /', () => {
    const error = rejects((raw) => { raw.coordination = etcd({ prefix: 'blockmirror/' }); }, 'coordination.etcd.prefix', 'not ending in /');
    assert.equal(error.message, 'coordination.etcd.prefix: "blockmirror/" is not a key prefix (1 to 128 of A-Z a-z 0-9 . _ - /, not ending in /)');
    for (const prefix of ['', 'has space', 'x'.repeat(129)]) {
      rejects((raw) => { raw.coordination = etcd({ prefix }); }, 'coordination.etcd.prefix', 'is not a key prefix');
    }
    rejects((raw) => { raw.coordination = etcd({ prefix: 7 }); }, 'coordination.etcd.prefix', 'got number (put it in quotes)');
  });

  test('coordination is static or a map with etcd, and its keys are checked', () => {
    rejects((raw) => { raw.coordination = 'etcd'; }, 'coordination', '"etcd" is not a coordination (static, or a map with etcd)');
    rejects((raw) => { raw.coordination = ['etcd']; }, 'coordination', 'expected static, or a map with etcd, got list');
    rejects((raw) => { raw.coordination = {}; }, 'coordination.etcd', 'required but missing');
    rejects((raw) => { raw.coordination = { etcd: 'http://10.0.0.1:2379' }; }, 'coordination.etcd', 'got string');
    rejects((raw) => { raw.coordination = { consul: {} }; }, 'coordination.consul', 'unknown key (expected one of: etcd)');
    rejects((raw) => { raw.coordination = etcd({ ttl: 5 }); }, 'coordination.etcd.ttl', 'unknown key (expected one of: endpoints, prefix, leaseTtlMs)');
  });
});

describe('cluster file: hooks', () => {
  test('every hook and the timeout read back as written; an absent hook is null', () => {
    const config = parseRaw((raw) => {
      raw.hooks = {
        promoted: '/usr/local/bin/announce-primary "$BLOCKMIRROR_VOLUME"',
        demoted: 'logger -t blockmirror demoted',
        splitBrain: 'mail -s "split brain" ops@example.com < /dev/null',
        timeoutMs: 5000,
      };
    });
    assert.deepEqual(config.hooks, {
      promoted: '/usr/local/bin/announce-primary "$BLOCKMIRROR_VOLUME"',
      demoted: 'logger -t blockmirror demoted',
      splitBrain: 'mail -s "split brain" ops@example.com < /dev/null',
      timeoutMs: 5000,
    });
    assert.deepEqual(parseRaw((raw) => { raw.hooks = { demoted: 'true' }; }).hooks, {
      promoted: null, demoted: 'true', splitBrain: null, timeoutMs: constants.hookTimeoutMsDefault,
    });
  });

  test('a hook command must not be empty', () => {
    const error = rejects((raw) => { raw.hooks = { promoted: '' }; }, 'hooks.promoted', 'must not be empty');
    assert.equal(error.message, 'hooks.promoted: must not be empty (leave the key out for no hook)');
    rejects((raw) => { raw.hooks = { demoted: '   ' }; }, 'hooks.demoted', 'must not be empty');
    rejects((raw) => { raw.hooks = { splitBrain: 42 }; }, 'hooks.splitBrain', 'expected a command, got number (put it in quotes)');
    rejects((raw) => { raw.hooks = { promoted: ['sh', '-c', 'x'] }; }, 'hooks.promoted', 'expected a command, got list');
  });

  test('timeoutMs is a positive integer of milliseconds', () => {
    rejects((raw) => { raw.hooks = { timeoutMs: 0 }; }, 'hooks.timeoutMs', 'must be an integer from 1 to 2147483647, got 0');
    rejects((raw) => { raw.hooks = { timeoutMs: 2 ** 31 }; }, 'hooks.timeoutMs', 'got 2147483648');
    rejects((raw) => { raw.hooks = { timeoutMs: '30s' }; }, 'hooks.timeoutMs', 'expected an integer');
  });

  test('hooks is a map of the known keys', () => {
    rejects((raw) => { raw.hooks = { onPromote: 'x' }; }, 'hooks.onPromote', 'unknown key (expected one of: promoted, demoted, splitBrain, timeoutMs)');
    rejects((raw) => { raw.hooks = 'echo hi'; }, 'hooks', 'expected a map with promoted, demoted, splitBrain, timeoutMs, got string');
  });
});

describe('cluster file: witnesses and quorum', () => {
  const witnessNode = (id: string, port: number): RawMap => ({
    id, nbd: `127.0.0.1:${10800 + port}`, replication: `127.0.0.1:${7700 + port}`, admin: `127.0.0.1:${9700 + port}`, dataDir: `./data/${id}`, witness: true,
  });

  test('witness defaults to false; quorum to off and onNoQuorum to suspend', () => {
    const config = parseClusterConfig(designExample, { baseDir });
    assert.deepEqual(config.nodes.map((node) => node.witness), [false, false]);
    assert.equal(config.volumes[0]?.quorum, 'off');
    assert.equal(config.volumes[0]?.onNoQuorum, 'suspend');
    // `key:` alone means the default too.
    const empty = parseRaw((raw) => {
      at(raw.nodes, 0).witness = null;
      at(raw.volumes, 0).quorum = null;
      at(raw.volumes, 0).onNoQuorum = null;
    });
    assert.equal(at(empty.nodes, 0).witness, false);
    assert.equal(empty.volumes[0]?.quorum, 'off');
    assert.equal(empty.volumes[0]?.onNoQuorum, 'suspend');
  });

  test('a witness node, a majority volume and every value of quorum and onNoQuorum read back as written', () => {
    const config = parseRaw((raw) => {
      raw.nodes.push(witnessNode('w', 3));
      at(raw.nodes, 1).witness = false;
      raw.volumes = [
        { name: 'q', size: '1GiB', replicas: ['a', 'b'], primary: 'a', quorum: 'majority', onNoQuorum: 'io-error' },
        { name: 'qs', size: '1GiB', replicas: ['b', 'a'], primary: 'b', mode: 'async', quorum: 'majority', onNoQuorum: 'suspend' },
        { name: 'plain', size: '1GiB', replicas: ['a', 'b'], primary: 'a', quorum: 'off', onNoQuorum: 'io-error' },
        { name: 'alone', size: '1GiB', replicas: ['a'], primary: 'a', mode: 'local', quorum: 'off' },
      ];
    });
    assert.deepEqual(config.nodes.map((node) => [node.id, node.witness]), [['a', false], ['b', false], ['w', true]]);
    const w = findNode(config, 'w');
    assert.deepEqual(w.replication, { host: '127.0.0.1', port: 7703 });
    assert.equal(w.dataDir, '/etc/blockmirror/data/w');
    assert.deepEqual(
      config.volumes.map((volume) => [volume.name, volume.quorum, volume.onNoQuorum]),
      [['q', 'majority', 'io-error'], ['qs', 'majority', 'suspend'], ['plain', 'off', 'io-error'], ['alone', 'off', 'suspend']],
    );
  });

  test('afterSplitBrain defaults to disconnect, reads back every policy, and refuses another word naming the field', () => {
    assert.equal(parseClusterConfig(designExample, { baseDir }).volumes[0]?.afterSplitBrain, 'disconnect');
    for (const policy of ['disconnect', 'discard-zero-changes', 'discard-younger-primary', 'discard-least-changes']) {
      const config = parseRaw((raw) => {
        at(raw.volumes, 0).afterSplitBrain = policy;
      });
      assert.equal(config.volumes[0]?.afterSplitBrain, policy);
    }
    const error = rejects((raw) => {
      at(raw.volumes, 0).afterSplitBrain = 'discard-older-primary';
    }, 'volumes[0].afterSplitBrain', 'expected one of');
    assert.equal(error.message, 'volumes[0].afterSplitBrain: expected one of disconnect, discard-zero-changes, discard-younger-primary, discard-least-changes, got "discard-older-primary"');
  });

  test('a witness listed among a volume\'s replicas', () => {
    const error = rejects((raw) => {
      raw.nodes.push(witnessNode('w', 3));
      at(raw.volumes, 0).replicas = ['a', 'w'];
    }, 'volumes[0].replicas[1]', 'is a witness');
    assert.equal(error.message, 'volumes[0].replicas[1]: "w" is a witness: it stores no data (it only counts toward quorum)');
    // As the primary too, on a majority volume, and on a local one: the replica is what is wrong.
    rejects((raw) => {
      raw.nodes.push(witnessNode('w', 3));
      raw.volumes = [{ name: 'vol0', size: '1GiB', replicas: ['w', 'a'], primary: 'w', quorum: 'majority' }];
    }, 'volumes[0].replicas[0]', '"w" is a witness');
    rejects((raw) => {
      raw.nodes.push(witnessNode('w', 3));
      raw.volumes.push({ name: 'vol1', size: '1GiB', replicas: ['w'], primary: 'w', mode: 'local' });
    }, 'volumes[1].replicas[0]', '"w" is a witness');
    // A node that says witness: false is an ordinary replica.
    assert.deepEqual(parseRaw((raw) => { at(raw.nodes, 1).witness = false; }).volumes[0]?.replicas, ['a', 'b']);
  });

  test('quorum: majority on a local volume', () => {
    const error = rejects((raw) => {
      raw.volumes = [{ name: 'vol0', size: '1GiB', replicas: ['a'], primary: 'a', mode: 'local', quorum: 'majority' }];
    }, 'volumes[0].quorum', 'majority needs a mirrored volume');
    assert.match(error.message, /local volume has one copy/);
  });

  test('quorum and onNoQuorum values outside their lists', () => {
    const error = rejects((raw) => { at(raw.volumes, 0).quorum = 'x'; }, 'volumes[0].quorum', 'expected one of off, majority, got "x"');
    assert.equal(error.message, 'volumes[0].quorum: expected one of off, majority, got "x"');
    rejects((raw) => { at(raw.volumes, 0).quorum = 'Majority'; }, 'volumes[0].quorum', 'got "Majority"');
    rejects((raw) => { at(raw.volumes, 0).quorum = true; }, 'volumes[0].quorum', 'expected one of off, majority, got boolean');
    rejects((raw) => { at(raw.volumes, 0).quorum = 2; }, 'volumes[0].quorum', 'got number');
    rejects((raw) => { at(raw.volumes, 0).onNoQuorum = 'panic'; }, 'volumes[0].onNoQuorum', 'expected one of suspend, io-error, got "panic"');
    rejects((raw) => { at(raw.volumes, 0).onNoQuorum = ['suspend']; }, 'volumes[0].onNoQuorum', 'expected one of suspend, io-error, got list');
  });

  test('witness must be true or false', () => {
    rejects((raw) => { at(raw.nodes, 1).witness = 'yes'; }, 'nodes[1].witness', 'expected true or false, got string (YAML 1.2 reads "yes" as a string');
    rejects((raw) => { at(raw.nodes, 0).witness = 1; }, 'nodes[0].witness', 'expected true or false, got number');
    rejects((raw) => { at(raw.nodes, 0).witness = 'true'; }, 'nodes[0].witness', 'got string');
  });

  test('witness belongs to a node and quorum to a volume, not the other way round', () => {
    rejects((raw) => { at(raw.volumes, 0).witness = true; }, 'volumes[0].witness', 'unknown key');
    rejects((raw) => { at(raw.nodes, 0).quorum = 'majority'; }, 'nodes[0].quorum', 'unknown key');
  });

  test('quorumMembers: the replicas in their order, then every witness in node order', () => {
    const config = parseRaw((raw) => {
      raw.nodes.splice(1, 0, witnessNode('w1', 3));
      raw.nodes.push(witnessNode('w0', 4));
      raw.nodes.push({ id: 'c', nbd: '127.0.0.1:10815', replication: '127.0.0.1:7705', admin: '127.0.0.1:9705', dataDir: './data/c' });
      raw.volumes = [
        { name: 'q', size: '1GiB', replicas: ['b', 'a'], primary: 'a', quorum: 'majority' },
        { name: 'r', size: '1GiB', replicas: ['c', 'a', 'b'], primary: 'c' },
      ];
    });
    assert.deepEqual(quorumMembers(config, at(config.volumes, 0)), ['b', 'a', 'w1', 'w0']);
    assert.deepEqual(quorumMembers(config, at(config.volumes, 1)), ['c', 'a', 'b', 'w1', 'w0']);
    // Without witnesses, the replicas alone.
    const plain = parseClusterConfig(designExample, { baseDir });
    assert.deepEqual(quorumMembers(plain, at(plain.volumes, 0)), ['a', 'b']);
    // It takes plain values too, and returns a fresh list.
    const volume = { replicas: ['x'] };
    const members = quorumMembers({ nodes: [] }, volume);
    members.push('y');
    assert.deepEqual(volume.replicas, ['x']);
  });
});

describe('cluster file: every node\'s heartbeat fits one datagram', () => {
  const volume = (index: number, name: string, quorum: 'off' | 'majority'): RawMap => ({ name, size: '1GiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync', quorum, description: String(index) });

  test('64 volumes with quorum fit; a 65th volume is refused, naming the node', () => {
    const sixtyFour = parseRaw((raw) => {
      raw.volumes = Array.from({ length: 64 }, (_, index) => volume(index, `v${index}`, 'majority'));
    });
    assert.equal(sixtyFour.volumes.length, 64);
    rejects(
      (raw) => {
        raw.volumes = Array.from({ length: 65 }, (_, index) => volume(index, `v${index}`, 'off'));
      },
      'nodes[0]',
      /^nodes\[0\]: "a" would name 65 volumes in its heartbeats, more than the 64 one heartbeat carries; spread the volumes over more nodes$/,
    );
  });

  test('volumes whose names and synced sets would overflow a datagram are refused with the size', () => {
    // 64 volumes of 64-character names with quorum, on nodes of 32-character ids: each
    // volume takes 2 + 64 + 16 + 2 + 2 × (2 + 32) = 152 bytes, 9728 in all.
    const renamed: Record<string, string> = { a: 'a'.repeat(32), b: 'b'.repeat(32) };
    rejects(
      (raw) => {
        raw.nodes = raw.nodes.map((node) => ({ ...node, id: renamed[String(node['id'])] ?? node['id'] }));
        raw.volumes = Array.from({ length: 64 }, (_, index) => ({
          ...volume(index, `${String(index).padStart(2, '0')}${'x'.repeat(62)}`, 'majority'),
          replicas: [renamed['a'], renamed['b']],
          primary: renamed['a'],
        }));
      },
      'nodes[0]',
      /^nodes\[0\]: "a{32}"'s heartbeats would take up to \d+ bytes, more than the 8192 of one datagram; spread its 64 volumes over more nodes, or shorten their names$/,
    );
  });
});
