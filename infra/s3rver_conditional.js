#!/usr/bin/env node
// s3rver (npm, 3.7.1) with S3 conditional writes, for the embedded broker's durable storage.
//
// tansu's storage engine creates record batches with `PUT If-None-Match: *` and advances each partition's
// watermark.json with `PUT If-Match: <etag>`, relying on the store to refuse (412) a write whose condition no
// longer holds. s3rver ignores both headers: two producers writing one partition at once were given the same
// offset, one batch overwrote the other, and acknowledged records were lost (800 acked, 244 stored; see
// infra/s3_emulator.py). This runs s3rver with one middleware in front that checks those conditions and
// serialises the requests to each object, so a condition is checked and the write made as one step, and a
// read never sees an object half rewritten (s3rver writes the file, then its metadata and md5; tansu read a
// watermark.json being rewritten and failed the produce with an incomplete body).
//
// usage: node s3rver_conditional.js S3RVER_MODULE_DIR --directory DIR --address HOST --port PORT
//        --configure-bucket NAME
'use strict';

const [moduleDir, ...rest] = process.argv.slice(2);
const S3rver = require(moduleDir);

function option(name) {
  const at = rest.indexOf(name);
  if (at < 0 || at + 1 >= rest.length) throw new Error(`missing ${name}`);
  return rest[at + 1];
}

const server = new S3rver({
  directory: option('--directory'),
  address: option('--address'),
  port: Number(option('--port')),
  configureBuckets: [{ name: option('--configure-bucket'), configs: [] }],
});

const queues = new Map(); // object path -> the tail of its writes in flight

function serialised(path, task) {
  const previous = queues.get(path) || Promise.resolve();
  const run = previous.then(task, task);
  const tail = run.catch(() => undefined);
  queues.set(path, tail);
  tail.then(() => {
    if (queues.get(path) === tail) queues.delete(path);
  });
  return run;
}

function bareEtag(value) {
  return value.trim().replace(/^W\//, '').replace(/^"|"$/g, '');
}

async function currentEtag(path) {
  const [bucket, ...parts] = path.replace(/^\//, '').split('/');
  try {
    return bareEtag((await server.store.getMetadata(bucket, decodeURIComponent(parts.join('/')))).etag);
  } catch (err) {
    if (err.code === 'ENOENT') return null;
    throw err;
  }
}

function preconditionFailed(ctx, condition) {
  ctx.status = 412;
  ctx.type = 'application/xml';
  ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code>' +
    `<Message>At least one of the pre-conditions you specified did not hold</Message><Condition>${condition}` +
    '</Condition></Error>';
}

async function bufferedBody(ctx) {
  const body = ctx.body;
  if (body && typeof body.pipe === 'function') {
    const chunks = [];
    for await (const chunk of body) chunks.push(chunk);
    ctx.body = Buffer.concat(chunks);
  }
}

async function objectRequests(ctx, next) {
  if (ctx.path.split('/').filter(Boolean).length < 2) return next(); // service and bucket requests
  return serialised(ctx.path, async () => {
    const ifMatch = ctx.method === 'PUT' ? ctx.get('if-match') : '';
    const ifNoneMatch = ctx.method === 'PUT' ? ctx.get('if-none-match') : '';
    if (ifMatch || ifNoneMatch) {
      const etag = await currentEtag(ctx.path);
      if (ifNoneMatch.trim() === '*' && etag !== null) return preconditionFailed(ctx, 'If-None-Match');
      if (ifMatch && (etag === null || bareEtag(ifMatch) !== etag)) return preconditionFailed(ctx, 'If-Match');
    }
    await next();
    await bufferedBody(ctx); // read the file while no write to it can run
  });
}

server.middleware.unshift(objectRequests);
server.run().catch((err) => {
  console.error(err);
  process.exit(1);
});
