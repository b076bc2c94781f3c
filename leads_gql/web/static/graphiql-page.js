// GraphiQL for leads-gql: queries over POST /graphql, subscriptions over the
// WebSocket at /graphql (graphql-transport-ws). Both carry the token from the
// Headers tab: as the Authorization header, and in the connection_init payload.
"use strict";

(function () {
  const EXAMPLE_FLOW = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
  const PLACEHOLDER = "Bearer <token>";
  const QUERY = `# GraphiQL for leads-gql.
#
# Every request needs a token. Make one with
#   leads-gql token --scope "leads:read"
# and paste it in the Headers tab below, in
# place of <token>. Set the chat flow in the
# Variables tab, then press Run (Ctrl-Enter).

query LeadsOfAFlow($chatflowid: ID!) {
  leadsByChatflow(chatflowid: $chatflowid) {
    id
    name
    email
    phone
    chatflowid
    chatId
    createdDate
  }
}

query NewestLeads($chatflowid: ID!) {
  leads(chatflowid: $chatflowid, first: 10,
        orderBy: NEWEST_FIRST) {
    totalCount
    edges {
      node { id name email phone createdDate }
    }
    pageInfo { hasNextPage endCursor }
  }
}

# Runs until stopped: each new lead of the flow.
subscription NewLeads($chatflowid: ID!) {
  leadCreated(chatflowid: $chatflowid) {
    id
    name
    email
    phone
    createdDate
  }
}
`;
  const HINT =
    "No token yet: paste one in the Headers tab, in place of <token> " +
    '(make one with: leads-gql token --scope "leads:read").';

  const socketUrl =
    (window.location.protocol === "https:" ? "wss://" : "ws://") +
    window.location.host +
    "/graphql";

  function authorizationOf(headersText) {
    try {
      const headers = JSON.parse(headersText || "{}");
      for (const key of Object.keys(headers || {})) {
        if (key.toLowerCase() === "authorization") return String(headers[key]);
      }
    } catch (error) {
      return null;
    }
    return null;
  }

  function makeFetcher() {
    const fetcher = GraphiQL.createFetcher({
      url: "/graphql",
      subscriptionUrl: socketUrl,
      headers: { Accept: "application/graphql-response+json, application/json" },
    });
    // Until a token is pasted, say so instead of sending the placeholder.
    return function (params, options) {
      const headers = (options && options.headers) || {};
      const auth = authorizationOf(JSON.stringify(headers));
      if (auth !== null && auth.includes("<token>")) {
        return Promise.resolve({ errors: [{ message: HINT }] });
      }
      return fetcher(params, options);
    };
  }

  const VARIABLES = JSON.stringify({ chatflowid: EXAMPLE_FLOW }, null, 2);
  // GraphiQL's editor takes its first variables from this prop or from what it
  // stored, not from defaultTabs: the example only until the user has their own.
  let storedVariables = null;
  try {
    storedVariables = window.localStorage.getItem("graphiql:variables");
  } catch (error) {
    storedVariables = null;
  }
  const initialVariables = storedVariables === null ? VARIABLES : undefined;

  // GraphiQL keeps tabs and history in localStorage, headers included (whatever
  // shouldPersistHeaders says, for history): everything but the headers, here, so
  // that no token outlives the tab.
  function withoutHeaders(value) {
    try {
      return JSON.stringify(JSON.parse(value, (key, item) => (key === "headers" ? undefined : item)));
    } catch (error) {
      return value;
    }
  }

  let storage;
  try {
    const local = window.localStorage;
    storage = new Proxy(local, {
      get(target, property) {
        if (property === "setItem") {
          return (key, value) => target.setItem(key, withoutHeaders(String(value)));
        }
        const item = Reflect.get(target, property);
        return typeof item === "function" ? item.bind(target) : item;
      },
    });
  } catch (error) {
    storage = undefined; // no localStorage here: GraphiQL keeps nothing
  }

  const root = ReactDOM.createRoot(document.getElementById("graphiql"));
  let fetcher = makeFetcher();
  let lastAuthorization = PLACEHOLDER;
  let pending = null;

  // A new token means a new schema to load (docs, completion): GraphiQL loads it
  // again when it is given a new fetcher.
  function onEditHeaders(text) {
    clearTimeout(pending);
    pending = setTimeout(function () {
      const auth = authorizationOf(text);
      if (auth && auth !== lastAuthorization && !auth.includes("<token>")) {
        lastAuthorization = auth;
        fetcher = makeFetcher();
        render();
      }
    }, 500);
  }

  function render() {
    root.render(
      React.createElement(GraphiQL, {
        fetcher: fetcher,
        defaultQuery: QUERY,
        defaultTabs: [{ query: QUERY, variables: VARIABLES }],
        variables: initialVariables,
        defaultHeaders: JSON.stringify({ Authorization: PLACEHOLDER }, null, 2),
        defaultEditorToolsVisibility: "headers",
        shouldPersistHeaders: false,
        storage: storage,
        onEditHeaders: onEditHeaders,
      }),
    );
  }

  render();
})();
